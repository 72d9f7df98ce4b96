//! Interop with an independent implementation: libsodium itself (libsodium-wrappers, pinned in
//! tests/atproto-net/package.json) seals values that this crate opens, and opens values this
//! crate seals. Skipped on a developer machine without the npm install; a failure under CI=true.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use atrund_secrets::{RunnerKeys, RunnerPublicKey, SealedEntry, SecretsRecord};
use base64::Engine;

fn net_dir() -> Option<PathBuf> {
    let dir = atrund_testnet::repo_root()
        .join("tests")
        .join("atproto-net");
    if dir.join("node_modules").join("libsodium-wrappers").is_dir() {
        return Some(dir);
    }
    let what = "tests/atproto-net/node_modules/libsodium-wrappers";
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{what} is missing and CI=true; run `npm ci` in tests/atproto-net");
    }
    eprintln!("SKIPPED: {what} is missing (run `npm ci` in tests/atproto-net)");
    None
}

/// Runs `script` under node with libsodium ready as `s`; returns stdout.
fn node(dir: &PathBuf, script: &str, args: &[&str]) -> String {
    let full = format!(
        "const s = require('libsodium-wrappers'); s.ready.then(() => {{ {script} }}).catch((e) => {{ console.error(e); process.exit(1); }});"
    );
    let out = Command::new("node")
        .current_dir(dir)
        .arg("-e")
        .arg(full)
        .args(args)
        .output()
        .expect("run node");
    assert!(
        out.status.success(),
        "node failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_string()
}

const VALUES: [(&str, &str); 3] = [
    ("API_TOKEN", "tok-3f9a"),
    ("UNICODE", "päss wörd ✓ 🔑"),
    ("EMPTY", ""),
];

#[test]
fn libsodium_sealed_values_open_here_and_ours_open_there() {
    let Some(dir) = net_dir() else { return };
    let tmp = tempfile::tempdir().expect("temp");
    let key_path = tmp.path().join("runner-key.json");
    let (keys, _) = RunnerKeys::load_or_create(&key_path, Duration::ZERO).expect("keys");
    let pk = keys.public_key();
    let b64 = base64::engine::general_purpose::STANDARD;

    // libsodium seals to our public key (given in the multibase form authors see) the binding
    // envelope of docs/secrets.md, built with nothing but JSON.stringify.
    let values = serde_json::to_string(&VALUES).expect("json");
    let sealed = node(
        &dir,
        r#"const [pk, mb, values] = process.argv.slice(1);
           const env = (name, value) => JSON.stringify({ v: 2, did: "did:plc:interop", bundle: "hello", name, runnerKey: mb, value });
           const out = JSON.parse(values).map(([n, v]) => [n, s.to_base64(s.crypto_box_seal(s.from_string(env(n, v)), s.from_base64(pk, s.base64_variants.ORIGINAL)), s.base64_variants.ORIGINAL)]);
           console.log(JSON.stringify(out));"#,
        &[&b64.encode(pk.0), &pk.to_multibase(), &values],
    );
    let sealed: Vec<(String, String)> = serde_json::from_str(&sealed).expect("node output");
    let record = SecretsRecord {
        format: Some(atrund_secrets::RECORD_FORMAT),
        name: "hello".into(),
        runner_key: pk.to_multibase(),
        entries: sealed
            .iter()
            .map(|(n, s)| SealedEntry {
                name: n.clone(),
                sealed: b64.decode(s).expect("b64"),
            })
            .collect(),
        updated_at: "2026-01-01T00:00:00Z".into(),
    };
    let env = keys
        .open("did:plc:interop", "hello", &record)
        .expect("libsodium's boxes open");
    let got: Vec<(&str, &str)> = env.iter().map(|(n, v)| (n, v.expose())).collect();
    assert_eq!(got, VALUES);

    // We seal; libsodium opens with the key file's secret key and reads the envelope.
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&key_path).expect("read")).expect("json");
    let sk = file["current"]["secretKey"].as_str().expect("secretKey");
    let pk_again = RunnerPublicKey::from_multibase(&pk.to_multibase()).expect("multibase");
    let ours = atrund_secrets::seal_bound(
        &atrund_secrets::Binding {
            did: "did:plc:interop",
            bundle: "hello",
            name: "X",
            runner_key: &pk_again,
        },
        "from rust ✓",
    )
    .expect("seal");
    let opened = node(
        &dir,
        r#"const [pk, sk, c] = process.argv.slice(1).map((x) => s.from_base64(x, s.base64_variants.ORIGINAL));
           const e = JSON.parse(s.to_string(s.crypto_box_seal_open(c, pk, sk)));
           console.log([e.v, e.did, e.bundle, e.name, e.runnerKey, e.value].join("|"));"#,
        &[&b64.encode(pk.0), sk, &b64.encode(&ours)],
    );
    assert_eq!(
        opened,
        format!(
            "2|did:plc:interop|hello|X|{}|from rust ✓",
            pk.to_multibase()
        )
    );

    // And libsodium agrees on the public key of the secret key in our file.
    let derived = node(
        &dir,
        r#"const sk = s.from_base64(process.argv[1], s.base64_variants.ORIGINAL);
           console.log(s.to_base64(s.crypto_scalarmult_base(sk), s.base64_variants.ORIGINAL));"#,
        &[sk],
    );
    assert_eq!(derived, b64.encode(pk.0));
}
