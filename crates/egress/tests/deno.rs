//! Real Deno 2.9.6 through the proxy: HTTP_PROXY/HTTPS_PROXY = http://<token>:x@proxy, plain
//! http and https (CONNECT + TLS to a local rustls server) to an allowed name, and refusals for
//! a name not in the list. The names exist only in the proxy's resolver, so a 200 proves Deno
//! went through the proxy and authenticated with the token.

mod common;

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use atrund_egress::{EgressConfig, EgressPolicy, EgressProxy, MapResolver, NetRule};
use common::*;
use tokio::net::TcpListener;

/// An https server on 127.0.0.1 with a leaf for `allowed.test` signed by a throwaway CA.
async fn https_server(dir: &std::path::Path) -> (std::net::SocketAddr, std::path::PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["allowed.test".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca_cert, &ca_key)
        .unwrap();
    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, ca_cert.pem()).unwrap();

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(s).await else {
                    return;
                };
                let svc = hyper::service::service_fn(
                    |req: hyper::Request<hyper::body::Incoming>| async move {
                        let body = format!(
                            "tls {} host={}",
                            req.uri(),
                            req.headers()
                                .get("host")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("-")
                        );
                        Ok::<_, hyper::Error>(hyper::Response::new(http_body_util::Full::new(
                            hyper::body::Bytes::from(body),
                        )))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (addr, ca_path)
}

const SCRIPT: &str = r#"
const out = {};
for (const [k, u] of Object.entries(JSON.parse(Deno.args[0]))) {
  try {
    const r = await fetch(u);
    out[k] = { status: r.status, body: await r.text() };
  } catch (e) {
    out[k] = { error: String(e) };
  }
}
console.log(JSON.stringify(out));
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deno_fetch_through_the_proxy() {
    let Some(deno) = atrund_testnet::deno_path() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let web = http_server().await;
    let (tls, ca) = https_server(dir.path()).await;
    let resolver = MapResolver::new()
        .with("allowed.test", &[ip("127.0.0.1")])
        .with("denied.test", &[ip("127.0.0.1")])
        .with("loop.test", &[ip("127.0.0.1")]);
    let proxy = EgressProxy::start_with(
        EgressConfig {
            allow_cidrs: vec!["127.0.0.1/32".parse().unwrap()],
            ..EgressConfig::default()
        },
        Arc::new(resolver),
        Arc::new(LoopbackOnly::default()),
    )
    .await
    .unwrap();
    let net = [
        format!("allowed.test:{}", web.port()),
        format!("allowed.test:{}", tls.port()),
    ];
    let token = atrund_egress::new_token().unwrap();
    let _reg = proxy
        .register(
            token.clone(),
            EgressPolicy {
                bundle_label: "did:plc:deno/test".into(),
                allow: NetRule::parse_list(&net).unwrap(),
                runner: None,
                on_refusal: None,
            },
        )
        .unwrap();

    let urls = serde_json_like(&[
        ("http", format!("http://allowed.test:{}/hi?x=1", web.port())),
        ("https", format!("https://allowed.test:{}/sec", tls.port())),
        ("denied_http", format!("http://denied.test:{}/", web.port())),
        (
            "denied_https",
            format!("https://denied.test:{}/", tls.port()),
        ),
    ]);
    std::fs::write(dir.path().join("f.ts"), SCRIPT).unwrap();
    let proxy_url = atrund_egress::proxy_url(&token, proxy.local_addr());
    // --allow-net names the destinations only: Deno checks the URL's host, not the proxy's.
    let allow_net = format!(
        "--allow-net={},denied.test:{},denied.test:{}",
        net.join(","),
        web.port(),
        tls.port()
    );
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(&deno)
            .arg("run")
            .arg("--no-prompt")
            .arg("--cert")
            .arg(&ca)
            .arg(&allow_net)
            .arg(dir.path().join("f.ts"))
            .arg(&urls)
            .env_clear()
            .env("HTTP_PROXY", &proxy_url)
            .env("HTTPS_PROXY", &proxy_url)
            .env("DENO_DIR", dir.path().join("deno_dir"))
            .env("DENO_NO_UPDATE_CHECK", "1")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("deno did not finish in 60 s")
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "deno failed: {stdout}\n{stderr}");
    let line = stdout.lines().last().unwrap_or_default();
    eprintln!("deno said: {line}");

    // Plain http: forwarded in origin form, Host from the URL, token not passed upstream.
    assert!(
        line.contains(&format!(
            r#""http":{{"status":200,"body":"GET /hi?x=1 host=allowed.test:{} pa=- pc=- body="}}"#,
            web.port()
        )),
        "{line}"
    );
    // https: CONNECT with the token, TLS end to end with the local server.
    assert!(
        line.contains(&format!(
            r#""https":{{"status":200,"body":"tls /sec host=allowed.test:{}"}}"#,
            tls.port()
        )),
        "{line}"
    );
    // Refusals: plain http sees the proxy's 403, https's CONNECT fails.
    assert!(
        line.contains(r#""denied_http":{"status":403,"body":"at-rund egress: 'denied.test:"#),
        "{line}"
    );
    assert!(line.contains(r#""denied_https":{"error":"#), "{line}");
    let st = proxy.stats();
    assert_eq!(st.allowed, 2, "{st:?}");
    assert_eq!(st.denied.get("host_not_listed"), Some(&2), "{st:?}");
    assert_eq!(st.denied.get("no_token"), None, "{st:?}");
}

/// A JSON object of string pairs (values here are plain URLs, no escaping needed).
fn serde_json_like(pairs: &[(&str, String)]) -> String {
    let inner: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("\"{k}\":\"{v}\""))
        .collect();
    format!("{{{}}}", inner.join(","))
}
