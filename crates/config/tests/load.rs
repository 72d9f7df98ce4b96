//! Loading, merging, env overrides and validation through the public API.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use atrund_config::{
    known_env_vars, AuthorPolicy, Config, ConfigError, Isolation, LimitRange, Source, TrustGraph,
};

const FILE: &str = "/etc/at-rund/config.toml";

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn load(file: Option<&str>, pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
    Config::load_str(file.map(|t| (Path::new(FILE), t)), &env(pairs))
}

fn err(file: Option<&str>, pairs: &[(&str, &str)]) -> ConfigError {
    match load(file, pairs) {
        Ok(c) => panic!("expected an error, got {c:?}"),
        Err(e) => e,
    }
}

fn file_src() -> Source {
    Source::File(PathBuf::from(FILE))
}

#[test]
fn no_file_gives_defaults() {
    let c = load(None, &[]).unwrap();
    assert_eq!(c.listen.to_string(), "127.0.0.1:3000");
    assert_eq!(c.plc_url.as_str(), "https://plc.directory/");
    assert!(!c.allow_http);
    assert_eq!(c.policy, AuthorPolicy::AllowList(vec![]));
    assert!(c.policy.is_closed());
    assert_eq!(c.isolation, Isolation::Auto);
    assert_eq!(c.data_dir, PathBuf::from("./.at-rund-data"));
    assert_eq!(c.identity.timeout_ms, 3000);
    assert_eq!(c.identity.cache_stale_secs, 3600);
    assert_eq!(c.identity.cache_max_secs, 86400);
    assert_eq!(c.identity.cache_error_secs, 120);
    assert!(c.identity.dns);
    assert_eq!(c.identity.handle_resolver, None);
    assert_eq!(c.fetch.max_record_bytes, 1 << 20);
    assert_eq!(c.fetch.max_bundle_bytes, 20 << 20);
    assert_eq!(c.fetch.revalidate_secs, 30);
    assert_eq!(c.http.max_request_body_bytes, 10 << 20);
    assert_eq!(c.deno.path, None);
    assert_eq!(
        c.limits.timeout_ms,
        LimitRange {
            default: 10_000,
            max: 60_000
        }
    );
    assert_eq!(
        c.limits.memory_mib,
        LimitRange {
            default: 128,
            max: 512
        }
    );
    assert_eq!(
        c.limits.concurrency,
        LimitRange {
            default: 8,
            max: 64
        }
    );
    assert!(c.permissions.net && c.permissions.read && c.permissions.write);
    assert!(!c.permissions.ffi && !c.permissions.sys && c.permissions.run.is_empty());
    assert_eq!(c.source_of("listen"), Source::Default);
    // Config::default() is the same set of values.
    assert_eq!(c, Config::default());
    assert!(Config::default().validate().is_ok());
}

#[test]
fn data_dir_is_computed_from_the_environment() {
    let c = load(None, &[("XDG_DATA_HOME", "/xdg"), ("HOME", "/home/op")]).unwrap();
    assert_eq!(c.data_dir, PathBuf::from("/xdg/at-rund"));
    assert!(matches!(c.source_of("data_dir"), Source::Computed(s) if s.contains("XDG_DATA_HOME")));
    let c = load(None, &[("HOME", "/home/op")]).unwrap();
    assert_eq!(c.data_dir, PathBuf::from("/home/op/.local/share/at-rund"));
    // root's home is closed to the uid `none` instances run as: a system service's dir instead.
    let c = load(None, &[("HOME", "/root")]).unwrap();
    assert_eq!(c.data_dir, PathBuf::from("/var/lib/at-rund"));
    assert!(matches!(c.source_of("data_dir"), Source::Computed(s) if s.contains("/root")));
    // A relative or empty XDG_DATA_HOME is ignored, as the XDG spec says.
    let c = load(None, &[("XDG_DATA_HOME", "rel"), ("HOME", "/h")]).unwrap();
    assert_eq!(c.data_dir, PathBuf::from("/h/.local/share/at-rund"));
    let c = load(None, &[("XDG_DATA_HOME", ""), ("HOME", "")]).unwrap();
    assert_eq!(c.data_dir, PathBuf::from("./.at-rund-data"));
    // File and env still win.
    let c = load(Some("data_dir = \"/srv/at\""), &[("HOME", "/h")]).unwrap();
    assert_eq!(c.data_dir, PathBuf::from("/srv/at"));
    let c = load(None, &[("HOME", "/h"), ("ATRUND_DATA_DIR", "/var/x")]).unwrap();
    assert_eq!(c.data_dir, PathBuf::from("/var/x"));
}

#[test]
fn file_keys_are_read_and_merge_with_defaults() {
    let c = load(
        Some(
            r#"
listen = "0.0.0.0:8080"
policy = ["did:plc:abc123", "alice.test"]

[identity]
dns = false

[limits.timeout_ms]
max = 30000

[limits]
memory_mib = { default = 64, max = 256 }
concurrency.max = 16

[permissions]
run = ["ffmpeg"]
ffi = true
"#,
        ),
        &[],
    )
    .unwrap();
    assert_eq!(c.listen.to_string(), "0.0.0.0:8080");
    assert_eq!(
        c.policy,
        AuthorPolicy::AllowList(vec!["did:plc:abc123".into(), "alice.test".into()])
    );
    assert!(!c.identity.dns);
    assert_eq!(
        c.identity.timeout_ms, 3000,
        "untouched key keeps its default"
    );
    assert_eq!(
        c.limits.timeout_ms,
        LimitRange {
            default: 10_000,
            max: 30_000
        }
    );
    assert_eq!(
        c.limits.memory_mib,
        LimitRange {
            default: 64,
            max: 256
        }
    );
    assert_eq!(
        c.limits.concurrency,
        LimitRange {
            default: 8,
            max: 16
        }
    );
    assert_eq!(c.permissions.run, vec!["ffmpeg".to_string()]);
    assert!(c.permissions.ffi);
    assert_eq!(c.source_of("listen"), file_src());
    assert_eq!(c.source_of("limits.timeout_ms.max"), file_src());
    assert_eq!(c.source_of("limits.timeout_ms.default"), Source::Default);
    let c = load(Some("policy = \"open\""), &[]).unwrap();
    assert_eq!(c.policy, AuthorPolicy::Open);
}

#[test]
fn env_overrides_file() {
    let c = load(
        Some("listen = \"0.0.0.0:8080\"\n[limits.timeout_ms]\nmax = 30000\n"),
        &[
            ("ATRUND_LISTEN", "127.0.0.1:9999"),
            ("ATRUND_LIMITS_TIMEOUT_MS_MAX", "45000"),
            ("ATRUND_LIMITS_TIMEOUT_MS_DEFAULT", "2000"),
            ("ATRUND_IDENTITY_DNS", "0"),
            ("ATRUND_PERMISSIONS_RUN", " ffmpeg , convert "),
            ("ATRUND_PERMISSIONS_NET", "false"),
            ("ATRUND_PLC_URL", "https://plc.example.com"),
            ("ATRUND_FETCH_MAX_BUNDLE_BYTES", "1000"),
            ("ATRUND_POLICY", "open"),
        ],
    )
    .unwrap();
    assert_eq!(c.listen.to_string(), "127.0.0.1:9999");
    assert_eq!(
        c.limits.timeout_ms,
        LimitRange {
            default: 2000,
            max: 45_000
        }
    );
    assert!(!c.identity.dns);
    assert_eq!(c.permissions.run, vec!["ffmpeg", "convert"]);
    assert!(!c.permissions.net);
    assert_eq!(c.plc_url.as_str(), "https://plc.example.com/");
    assert_eq!(c.fetch.max_bundle_bytes, 1000);
    assert_eq!(c.policy, AuthorPolicy::Open);
    assert_eq!(c.source_of("listen"), Source::Env("ATRUND_LISTEN".into()));
    assert_eq!(
        c.source_of("limits.timeout_ms.max"),
        Source::Env("ATRUND_LIMITS_TIMEOUT_MS_MAX".into())
    );
    // An empty list from env clears the file's list.
    let c = load(
        Some("[permissions]\nrun = [\"git\"]"),
        &[("ATRUND_PERMISSIONS_RUN", "")],
    )
    .unwrap();
    assert!(c.permissions.run.is_empty());
}

#[test]
fn optional_keys() {
    let c = load(
        None,
        &[
            ("ATRUND_DENO_PATH", "/opt/deno/bin/deno"),
            ("ATRUND_ALLOW_HTTP", "1"),
            ("ATRUND_IDENTITY_HANDLE_RESOLVER", "http://127.0.0.1:2583"),
        ],
    )
    .unwrap();
    assert_eq!(c.deno.path, Some(PathBuf::from("/opt/deno/bin/deno")));
    assert_eq!(
        c.identity.handle_resolver.as_ref().map(|u| u.as_str()),
        Some("http://127.0.0.1:2583/")
    );
    let c = load(Some("[deno]\npath = \"/x/deno\""), &[]).unwrap();
    assert_eq!(c.deno.path, Some(PathBuf::from("/x/deno")));
    // An empty env value unsets an optional key set by the file.
    let c = load(
        Some("[deno]\npath = \"/x/deno\""),
        &[("ATRUND_DENO_PATH", "")],
    )
    .unwrap();
    assert_eq!(c.deno.path, None);
    let e = err(Some("[deno]\npath = \"\""), &[]);
    assert_eq!((e.code(), e.key()), ("ConfigInvalid", Some("deno.path")));
}

#[test]
fn bundle_domain_is_optional_checked_and_overridable() {
    assert_eq!(load(None, &[]).unwrap().http.bundle_domain, None);
    let c = load(Some("[http]\nbundle_domain = \"bundles.example.com\""), &[]).unwrap();
    assert_eq!(c.http.bundle_domain.as_deref(), Some("bundles.example.com"));
    let c = load(
        Some("[http]\nbundle_domain = \"bundles.example.com\""),
        &[("ATRUND_HTTP_BUNDLE_DOMAIN", "bundles.localhost")],
    )
    .unwrap();
    assert_eq!(c.http.bundle_domain.as_deref(), Some("bundles.localhost"));
    assert_eq!(
        c.source_of("http.bundle_domain"),
        Source::Env("ATRUND_HTTP_BUNDLE_DOMAIN".into())
    );
    assert!(c
        .to_toml()
        .contains("bundle_domain = \"bundles.localhost\"  # from environment variable ATRUND_HTTP_BUNDLE_DOMAIN"));
    // An empty value unsets it, as for every optional key.
    let c = load(
        Some("[http]\nbundle_domain = \"bundles.example.com\""),
        &[("ATRUND_HTTP_BUNDLE_DOMAIN", "")],
    )
    .unwrap();
    assert_eq!(c.http.bundle_domain, None);
    for bad in [
        "*.bundles.example.com",
        "https://bundles.example.com",
        "bundles.example.com:8443",
        "Bundles.Example.com",
        "bundles.example.com.",
    ] {
        let e = err(None, &[("ATRUND_HTTP_BUNDLE_DOMAIN", bad)]);
        assert_eq!(
            (e.code(), e.key()),
            ("ConfigInvalid", Some("http.bundle_domain")),
            "{bad}"
        );
        let msg = e.to_string();
        assert!(
            msg.contains("ATRUND_HTTP_BUNDLE_DOMAIN") && msg.contains("bundles.example.com"),
            "{msg}"
        );
    }
}

#[test]
fn unknown_file_keys_are_refused() {
    let e = err(Some("listn = \"0.0.0.0:1\""), &[]);
    assert_eq!(e.code(), "ConfigUnknownKey");
    assert_eq!(e.key(), Some("listn"));
    let msg = e.to_string();
    assert!(msg.contains(FILE) && msg.contains("listen"), "{msg}");

    let e = err(Some("[limits.timeout_ms]\nmaximum = 5"), &[]);
    assert_eq!(e.key(), Some("limits.timeout_ms.maximum"));
    assert!(e.to_string().contains("default, max"), "{e}");

    let e = err(Some("[microvm]\nkind = \"none\""), &[]);
    assert_eq!(e.key(), Some("microvm.kind"));
    let e = err(Some("[sandbox]\nkind = \"none\""), &[]);
    assert_eq!(e.key(), Some("sandbox.kind"));
}

#[test]
fn unknown_env_vars_are_refused_except_the_listed_ones() {
    let e = err(None, &[("ATRUND_LISTN", "0.0.0.0:1")]);
    assert_eq!(e.code(), "ConfigUnknownEnv");
    let msg = e.to_string();
    assert!(
        msg.contains("ATRUND_LISTN") && msg.contains("did you mean ATRUND_LISTEN"),
        "{msg}"
    );
    let e = err(None, &[("ATRUND_IDENTITY", "x")]);
    assert_eq!(e.code(), "ConfigUnknownEnv", "a section is not a key");
    // Exceptions and foreign variables are ignored.
    load(
        None,
        &[
            ("ATRUND_LOG", "debug"),
            ("ATRUND_CONFIG", "/etc/x.toml"),
            ("ATRUND_TEST_PDS", "http://127.0.0.1:1"),
            ("PATH", "/bin"),
            ("atrund_listen", "garbage"),
        ],
    )
    .unwrap();
}

#[test]
fn bools() {
    for (v, want) in [
        ("1", true),
        ("true", true),
        ("TRUE", true),
        ("0", false),
        ("false", false),
    ] {
        let c = load(None, &[("ATRUND_ALLOW_HTTP", v)]).unwrap();
        assert_eq!(c.allow_http, want, "{v}");
    }
    for v in ["yes", "", "2", "on"] {
        let e = err(None, &[("ATRUND_ALLOW_HTTP", v)]);
        assert_eq!(e.code(), "ConfigBadValue");
        assert_eq!(e.key(), Some("allow_http"));
        let msg = e.to_string();
        assert!(
            msg.contains("ATRUND_ALLOW_HTTP") && msg.contains("1, 0, true or false"),
            "{msg}"
        );
    }
    let e = err(Some("allow_http = \"yes\""), &[]);
    assert_eq!(e.key(), Some("allow_http"));
    assert!(e.to_string().contains("true or false"), "{e}");
}

#[test]
fn bad_listen() {
    let e = err(None, &[("ATRUND_LISTEN", "localhost")]);
    assert_eq!(e.code(), "ConfigBadValue");
    assert_eq!(e.key(), Some("listen"));
    let msg = e.to_string();
    assert!(
        msg.contains("ATRUND_LISTEN") && msg.contains("address:port"),
        "{msg}"
    );
    let e = err(Some("listen = \"1.2.3.4:99999\""), &[]);
    assert_eq!(e.key(), Some("listen"));
    assert!(e.to_string().contains(FILE), "{e}");
    let e = err(Some("listen = 3000"), &[]);
    assert_eq!(e.key(), Some("listen"));
    assert!(e.to_string().contains("address:port"), "{e}");
    assert!(load(None, &[("ATRUND_LISTEN", "[::1]:0")]).is_ok());
}

#[test]
fn wrong_types_and_numbers() {
    let e = err(Some("[fetch]\ntimeout_ms = \"10\""), &[]);
    assert_eq!(e.key(), Some("fetch.timeout_ms"));
    assert!(e.to_string().contains("whole number"), "{e}");
    let e = err(Some("[fetch]\ntimeout_ms = -1"), &[]);
    assert_eq!(e.key(), Some("fetch.timeout_ms"));
    let e = err(Some("identity = 5"), &[]);
    assert_eq!((e.code(), e.key()), ("ConfigBadValue", Some("identity")));
    let e = err(Some("[limits]\ntimeout_ms = 5000"), &[]);
    assert_eq!(e.key(), Some("limits.timeout_ms"));
    assert!(e.to_string().contains("default, max"), "{e}");
    let e = err(Some("[permissions]\nrun = [\"a\", 1]"), &[]);
    assert_eq!(e.key(), Some("permissions.run"));
    for v in ["ten", "-5", "1.5", "", "99999999999999999999"] {
        let e = err(None, &[("ATRUND_FETCH_TIMEOUT_MS", v)]);
        assert_eq!(e.key(), Some("fetch.timeout_ms"), "{v}");
        assert!(e.to_string().contains("ATRUND_FETCH_TIMEOUT_MS"));
    }
    let e = err(None, &[("ATRUND_FETCH_TIMEOUT_MS", "0")]);
    assert_eq!(
        (e.code(), e.key()),
        ("ConfigInvalid", Some("fetch.timeout_ms"))
    );
    let e = err(None, &[("ATRUND_IDENTITY_CACHE_STALE_SECS", "100000")]);
    assert_eq!(e.key(), Some("identity.cache_stale_secs"));
}

#[test]
fn limit_default_above_max_is_refused() {
    let e = err(
        None,
        &[
            ("ATRUND_LIMITS_MEMORY_MIB_DEFAULT", "1024"),
            ("ATRUND_LIMITS_MEMORY_MIB_MAX", "512"),
        ],
    );
    assert_eq!(e.code(), "ConfigInvalid");
    assert_eq!(e.key(), Some("limits.memory_mib.default"));
    let msg = e.to_string();
    assert!(
        msg.contains("1024")
            && msg.contains("512")
            && msg.contains("ATRUND_LIMITS_MEMORY_MIB_DEFAULT"),
        "{msg}"
    );
    let e = err(Some("[limits.cpu_ms]\ndefault = 0"), &[]);
    assert_eq!(e.key(), Some("limits.cpu_ms.default"));
    assert!(e.to_string().contains(FILE));
}

#[test]
fn operator_only_limits_are_checked() {
    let e = err(None, &[("ATRUND_LIMITS_PIDS", "16")]);
    assert_eq!(e.key(), Some("limits.pids"));
    assert!(e.to_string().contains("at least 32"), "{e}");
    let e = err(None, &[("ATRUND_LIMITS_OPEN_FILES", "10")]);
    assert_eq!(e.key(), Some("limits.open_files"));
    let e = err(Some("[limits]\nmax_response_bytes = 0"), &[]);
    assert_eq!(e.key(), Some("limits.max_response_bytes"));
    let e = err(None, &[("ATRUND_LIMITS_CPU_QUOTA_PERCENT", "0")]);
    assert_eq!(e.key(), Some("limits.cpu_quota_percent"));
}

#[test]
fn idle_freeze_keys() {
    let c = load(None, &[]).unwrap();
    assert_eq!(
        c.limits.freeze_after_idle(),
        Some(std::time::Duration::from_millis(50))
    );
    let c = load(None, &[("ATRUND_LIMITS_FREEZE_AFTER_IDLE_MS", "0")]).unwrap();
    assert_eq!(
        c.limits.freeze_after_idle(),
        Some(std::time::Duration::ZERO)
    );
    let c = load(Some("[limits]\nfreeze_idle = false"), &[]).unwrap();
    assert_eq!(c.limits.freeze_after_idle(), None);
    let e = err(None, &[("ATRUND_LIMITS_FREEZE_AFTER_IDLE_MS", "3600001")]);
    assert_eq!(e.key(), Some("limits.freeze_after_idle_ms"));
    assert!(e.to_string().contains("freeze_idle = false"), "{e}");
}

#[test]
fn microvm_and_firecracker_need_their_settings_and_container_auto_load() {
    let e = err(Some("isolation = \"firecracker\""), &[]);
    assert_eq!(
        (e.code(), e.key()),
        ("ConfigInvalid", Some("microvm.kernel"))
    );
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("vmlinux");
    std::fs::write(&kernel, "not really a kernel").unwrap();
    let module = dir.path().join("vsock.ko");
    std::fs::write(&module, "").unwrap();
    let k = kernel.to_str().unwrap();
    let m = module.to_str().unwrap();
    fn with<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        let mut v = vec![("ATRUND_ISOLATION", "microvm")];
        v.extend_from_slice(extra);
        v
    }
    for (env, key, says) in [
        (with(&[]), "microvm.kernel", "needs a guest kernel"),
        (
            with(&[("ATRUND_MICROVM_KERNEL", "/nonexistent/vmlinux")]),
            "microvm.kernel",
            "is not a file",
        ),
        (
            with(&[
                ("ATRUND_MICROVM_KERNEL", k),
                ("ATRUND_MICROVM_MODULES", "/etc/hostname"),
            ]),
            "microvm.modules",
            "not a kernel module",
        ),
        (
            with(&[("ATRUND_MICROVM_KERNEL", k), ("ATRUND_MICROVM_VCPUS", "0")]),
            "microvm.vcpus",
            "1 to 32",
        ),
        (
            with(&[
                ("ATRUND_MICROVM_KERNEL", k),
                ("ATRUND_MICROVM_VMM", "firecracker"),
                ("ATRUND_MICROVM_ACCEL", "tcg"),
            ]),
            "microvm.accel",
            "KVM only",
        ),
        (
            vec![
                ("ATRUND_ISOLATION", "firecracker"),
                ("ATRUND_MICROVM_KERNEL", k),
                ("ATRUND_MICROVM_VMM", "qemu"),
            ],
            "microvm.vmm",
            "runs Firecracker",
        ),
        (
            with(&[("ATRUND_MICROVM_KERNEL", k), ("ATRUND_MICROVM_QEMU", "")]),
            "microvm.qemu",
            "must name the program",
        ),
    ] {
        let e = err(None, &env);
        assert_eq!((e.code(), e.key()), ("ConfigInvalid", Some(key)), "{e}");
        assert!(e.to_string().contains(says), "{e}");
    }
    let e = err(
        None,
        &with(&[
            ("ATRUND_MICROVM_KERNEL", k),
            ("ATRUND_MICROVM_ACCEL", "xen"),
        ]),
    );
    assert_eq!(
        (e.code(), e.key()),
        ("ConfigBadValue", Some("microvm.accel"))
    );
    assert!(e.to_string().contains("\"tcg\""), "{e}");
    let c = load(
        None,
        &with(&[
            ("ATRUND_MICROVM_KERNEL", k),
            ("ATRUND_MICROVM_MODULES", m),
            ("ATRUND_MICROVM_ACCEL", "tcg"),
        ]),
    )
    .unwrap();
    assert_eq!(c.isolation.as_str(), "microvm");
    assert_eq!(c.microvm_vmm(), atrund_config::MicroVmVmm::Qemu);
    assert_eq!(c.microvm.accel, atrund_config::MicroVmAccel::Tcg);
    // Firecracker: by the isolation's name, or by microvm.vmm.
    for env in [
        vec![
            ("ATRUND_ISOLATION", "firecracker"),
            ("ATRUND_MICROVM_KERNEL", k),
        ],
        with(&[
            ("ATRUND_MICROVM_KERNEL", k),
            ("ATRUND_MICROVM_VMM", "firecracker"),
        ]),
    ] {
        let c = load(None, &env).unwrap();
        assert_eq!(c.microvm_vmm(), atrund_config::MicroVmVmm::Firecracker);
    }
    assert_eq!(c.microvm.modules, vec![module.clone()]);
    // Unused without isolation = "microvm": nothing is checked.
    assert!(load(None, &[("ATRUND_MICROVM_VCPUS", "0")]).is_ok());
    for mode in ["none", "auto", "container"] {
        assert_eq!(
            load(None, &[("ATRUND_ISOLATION", mode)])
                .unwrap()
                .isolation
                .as_str(),
            mode
        );
    }
    let e = err(None, &[("ATRUND_ISOLATION", "docker")]);
    assert_eq!((e.code(), e.key()), ("ConfigBadValue", Some("isolation")));
    assert!(e.to_string().contains("container"), "{e}");
    let c = load(
        None,
        &[
            ("ATRUND_EGRESS_ALLOW_CIDRS", "192.168.1.0/24,fd00::/8"),
            ("ATRUND_CONTAINER_TMP_MIB", "16"),
        ],
    )
    .unwrap();
    assert_eq!(c.egress.allow_cidrs.len(), 2);
    assert_eq!(c.container.tmp_mib, 16);
    for bad in ["10.0.0.0", "10.0.0.0/33", "x/8"] {
        let e = err(None, &[("ATRUND_EGRESS_DENY_CIDRS", bad)]);
        assert_eq!(e.key(), Some("egress.deny_cidrs"), "{bad}");
    }
}

#[test]
fn allow_addrs_takes_ranges_and_single_ports() {
    let c = load(None, &[]).unwrap();
    assert!(c.allow_addrs.is_empty(), "nothing is opened by default");
    let c = load(
        None,
        &[(
            "ATRUND_ALLOW_ADDRS",
            "127.0.0.1:2582, [::1]:2583,10.0.0.0/8",
        )],
    )
    .unwrap();
    assert_eq!(
        c.allow_addrs,
        ["127.0.0.1:2582", "[::1]:2583", "10.0.0.0/8"]
    );
    assert!(
        c.to_toml().contains("ATRUND_ALLOW_ADDRS"),
        "{}",
        c.to_toml()
    );
    let c = load(Some("allow_addrs = [\"192.168.1.0/24\"]"), &[]).unwrap();
    assert_eq!(c.allow_addrs, ["192.168.1.0/24"]);
    for bad in [
        "127.0.0.1",
        "localhost:2582",
        "127.0.0.1:0",
        "::1:80",
        "10.0.0.0/33",
    ] {
        let e = err(None, &[("ATRUND_ALLOW_ADDRS", bad)]);
        assert_eq!(
            (e.code(), e.key()),
            ("ConfigInvalid", Some("allow_addrs")),
            "{bad}"
        );
        assert!(e.to_string().contains("127.0.0.1:2582"), "{e}");
    }
    // allow_http alone opens nothing: it stays a scheme rule.
    let c = load(None, &[("ATRUND_ALLOW_HTTP", "1")]).unwrap();
    assert!(c.allow_addrs.is_empty());
}

#[test]
fn trusted_proxies_take_addresses_and_ranges_and_default_to_none() {
    let c = load(None, &[]).unwrap();
    assert!(
        c.http.trusted_proxies.is_empty(),
        "no proxy is trusted by default"
    );
    let c = load(
        None,
        &[("ATRUND_HTTP_TRUSTED_PROXIES", "127.0.0.1, ::1,10.0.0.0/24")],
    )
    .unwrap();
    assert_eq!(c.http.trusted_proxies, ["127.0.0.1", "::1", "10.0.0.0/24"]);
    let c = load(Some("[http]\ntrusted_proxies = [\"fd00::/64\"]"), &[]).unwrap();
    assert_eq!(c.http.trusted_proxies, ["fd00::/64"]);
    for bad in ["127.0.0.1:443", "proxy.example.com", "10.0.0.0/33", "*"] {
        let e = err(None, &[("ATRUND_HTTP_TRUSTED_PROXIES", bad)]);
        assert_eq!(
            (e.code(), e.key()),
            ("ConfigInvalid", Some("http.trusted_proxies")),
            "{bad}"
        );
        assert!(e.to_string().contains(bad), "{e}");
    }
}

#[test]
fn policy_parsing() {
    let c = load(
        None,
        &[(
            "ATRUND_POLICY",
            " did:plc:abc , Alice.Test,did:web:example.com ",
        )],
    )
    .unwrap();
    assert_eq!(
        c.policy,
        AuthorPolicy::AllowList(vec![
            "did:plc:abc".into(),
            "Alice.Test".into(),
            "did:web:example.com".into()
        ])
    );
    assert_eq!(
        c.policy.describe(),
        "allow-list: did:plc:abc, Alice.Test, did:web:example.com"
    );
    let c = load(None, &[("ATRUND_POLICY", " OPEN ")]).unwrap();
    assert_eq!(c.policy, AuthorPolicy::Open);
    assert_eq!(c.policy.describe(), "open");
    assert!(AuthorPolicy::default().describe().starts_with("closed"));
    // An empty value is the empty allow-list, overriding the file.
    let c = load(Some("policy = \"open\""), &[("ATRUND_POLICY", "")]).unwrap();
    assert!(c.policy.is_closed());

    for bad in ["a.test,,b.test", "a.test,", ",a.test"] {
        let e = err(None, &[("ATRUND_POLICY", bad)]);
        assert_eq!(
            (e.code(), e.key()),
            ("ConfigBadValue", Some("policy")),
            "{bad}"
        );
        assert!(e.to_string().contains("empty entries"), "{e}");
    }
    for bad in [
        "alice",
        "did:plc:",
        "open,alice.test",
        "@alice.test",
        "http://x.test",
    ] {
        let e = err(None, &[("ATRUND_POLICY", bad)]);
        assert_eq!(
            (e.code(), e.key()),
            ("ConfigInvalid", Some("policy")),
            "{bad}"
        );
        assert!(e.to_string().contains("ATRUND_POLICY"), "{e}");
    }
    let e = err(None, &[("ATRUND_POLICY", "@alice.test")]);
    assert!(e.to_string().contains("without the leading '@'"), "{e}");
    let e = err(Some("policy = \"closed\""), &[]);
    assert_eq!((e.code(), e.key()), ("ConfigBadValue", Some("policy")));
    assert!(e.to_string().contains("\"open\" or a list"), "{e}");
    let e = err(Some("policy = [\" alice.test\"]"), &[]);
    assert_eq!(e.key(), Some("policy"));
    let e = err(Some("policy = 1"), &[]);
    assert_eq!(e.key(), Some("policy"));
}

#[test]
fn trust_section_loads_and_is_checked() {
    let c = load(None, &[]).unwrap();
    assert_eq!(c.trust.graph, TrustGraph::None);
    assert_eq!(c.trust.operator, None);
    assert!(c.trust.deny.is_empty());

    let c = load(
        Some("[trust]\ngraph = \"mutuals\"\noperator = \"op.test\"\ndeny = [\"did:plc:bad\"]"),
        &[("ATRUND_TRUST_REFRESH_SECS", "60")],
    )
    .unwrap();
    assert_eq!(c.trust.graph, TrustGraph::Mutuals);
    assert_eq!(c.trust.operator.as_deref(), Some("op.test"));
    assert_eq!(c.trust.deny, vec!["did:plc:bad".to_string()]);
    assert_eq!(c.trust.refresh_secs, 60);
    let c = load(
        None,
        &[
            ("ATRUND_TRUST_GRAPH", "follows"),
            ("ATRUND_TRUST_OPERATOR", "did:plc:op"),
            ("ATRUND_TRUST_DENY", "a.test, did:plc:x"),
        ],
    )
    .unwrap();
    assert_eq!(c.trust.graph, TrustGraph::Follows);
    assert_eq!(c.trust.deny.len(), 2);

    type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);
    let cases: &[Case] = &[
        (
            &[("ATRUND_TRUST_GRAPH", "follows")],
            "trust.operator",
            "must name the account",
        ),
        (
            &[("ATRUND_TRUST_OPERATOR", "did:plc:op")],
            "trust.operator",
            "trust.graph is \"none\"",
        ),
        (
            &[
                ("ATRUND_TRUST_GRAPH", "follows"),
                ("ATRUND_TRUST_OPERATOR", "@op.test"),
            ],
            "trust.operator",
            "neither a DID",
        ),
        (
            &[
                ("ATRUND_TRUST_GRAPH", "mutuals"),
                ("ATRUND_TRUST_OPERATOR", "op.test"),
                ("ATRUND_POLICY", "open"),
            ],
            "trust.graph",
            "would add nobody",
        ),
        (&[("ATRUND_TRUST_DENY", "bob")], "trust.deny", "entry 'bob'"),
        (
            &[
                ("ATRUND_TRUST_MAX_STALE_SECS", "10"),
                ("ATRUND_TRUST_REFRESH_SECS", "60"),
            ],
            "trust.max_stale_secs",
            "less than trust.refresh_secs",
        ),
        (
            &[("ATRUND_TRUST_REFRESH_SECS", "0")],
            "trust.refresh_secs",
            "greater than 0",
        ),
    ];
    for (pairs, key, says) in cases {
        let e = err(None, pairs);
        assert_eq!(
            (e.code(), e.key()),
            ("ConfigInvalid", Some(*key)),
            "{pairs:?}: {e}"
        );
        assert!(e.to_string().contains(says), "{e}");
    }
    let e = err(None, &[("ATRUND_TRUST_GRAPH", "friends")]);
    assert_eq!(e.key(), Some("trust.graph"), "{e}");
}

#[test]
fn plain_http_only_for_loopback_with_allow_http() {
    let e = err(None, &[("ATRUND_PLC_URL", "http://127.0.0.1:2582")]);
    assert_eq!((e.code(), e.key()), ("ConfigInvalid", Some("plc_url")));
    assert!(e.to_string().contains("ATRUND_ALLOW_HTTP=1"), "{e}");
    for ok in [
        "http://127.0.0.1:2582",
        "http://localhost:1",
        "http://[::1]:5",
    ] {
        let c = load(
            None,
            &[("ATRUND_PLC_URL", ok), ("ATRUND_ALLOW_HTTP", "true")],
        )
        .unwrap();
        assert_eq!(c.plc_url.scheme(), "http");
    }
    let e = err(
        None,
        &[
            ("ATRUND_PLC_URL", "http://plc.example.com"),
            ("ATRUND_ALLOW_HTTP", "1"),
        ],
    );
    assert!(e.to_string().contains("not loopback"), "{e}");
    for bad in [
        "ftp://plc.example.com",
        "file:///etc/passwd",
        "mailto:x@y.z",
    ] {
        let e = err(None, &[("ATRUND_PLC_URL", bad)]);
        assert_eq!(e.key(), Some("plc_url"), "{bad}");
    }
    let e = err(None, &[("ATRUND_PLC_URL", "plc.directory")]);
    assert_eq!((e.code(), e.key()), ("ConfigBadValue", Some("plc_url")));
    let e = err(
        None,
        &[("ATRUND_IDENTITY_HANDLE_RESOLVER", "http://127.0.0.1:1")],
    );
    assert_eq!(e.key(), Some("identity.handle_resolver"));
}

#[test]
fn permissions_run_entries() {
    let e = err(Some("[permissions]\nrun = [\"\"]"), &[]);
    assert_eq!(e.key(), Some("permissions.run"));
    let e = err(Some("[permissions]\nrun = [\"a,b\"]"), &[]);
    assert_eq!(e.key(), Some("permissions.run"));
    let e = err(None, &[("ATRUND_PERMISSIONS_RUN", "ffmpeg,,git")]);
    assert_eq!(
        (e.code(), e.key()),
        ("ConfigBadValue", Some("permissions.run"))
    );
}

#[test]
fn garbage_toml_does_not_panic() {
    let e = err(Some("listen = "), &[]);
    assert_eq!(e.code(), "ConfigSyntax");
    assert!(
        e.to_string().contains(FILE) && e.to_string().contains("line 1"),
        "{e}"
    );
    let e = err(Some("\n\n[limits\n"), &[]);
    assert!(e.to_string().contains("line 3"), "{e}");
    let inputs = [
        "\0\0\0",
        "[[[",
        "listen = \"\u{1F600}\"",
        "a.b.c.d.e = 1",
        "[limits.timeout_ms.default]\nx = 1",
        "limits = []",
        "policy = [[\"a\"]]",
        "policy = [1, 2]",
        "isolation = []",
        "listen = { a = 1 }",
        "[fetch]\nmax_bundle_bytes = 1e9",
        "data_dir = 1979-05-27",
        &"[".repeat(10_000),
        &"a = [".repeat(1000),
    ];
    for input in inputs {
        assert!(load(Some(input), &[]).is_err(), "{input:?}");
    }
    // Pseudo-random byte soup: any result is fine, a panic is not.
    let mut x: u32 = 12345;
    for _ in 0..300 {
        let s: String = (0..64)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                b"[]=\"'.,\n #abcz019_-{}"[(x >> 16) as usize % 21] as char
            })
            .collect();
        let _ = load(Some(&s), &[]);
    }
}

#[test]
fn missing_file_is_unreadable() {
    let e = Config::load(Some(Path::new("/nonexistent/at-rund.toml")), &env(&[])).unwrap_err();
    assert_eq!(e.code(), "ConfigUnreadable");
    assert!(e.to_string().contains("/nonexistent/at-rund.toml"));
    // And a real file works through the same path.
    let dir = std::env::temp_dir().join(format!("atrund-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("c.toml");
    std::fs::write(&p, "listen = \"127.0.0.1:4000\"\n").unwrap();
    let c = Config::load(Some(&p), std::iter::empty::<(String, String)>()).unwrap();
    assert_eq!(c.listen.port(), 4000);
    assert_eq!(c.source_of("listen"), Source::File(p.clone()));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn to_toml_round_trips_and_names_sources() {
    let c = load(
        Some("policy = [\"alice.test\"]\n[limits.timeout_ms]\nmax = 30000\n"),
        &[
            ("HOME", "/home/op"),
            ("ATRUND_LISTEN", "127.0.0.1:9000"),
            ("ATRUND_DENO_PATH", "/usr/bin/deno"),
        ],
    )
    .unwrap();
    let text = c.to_toml();
    assert!(
        text.contains("listen = \"127.0.0.1:9000\"  # from environment variable ATRUND_LISTEN"),
        "{text}"
    );
    assert!(
        text.contains(
            "data_dir = \"/home/op/.local/share/at-rund\"  # from the computed default (from HOME)"
        ),
        "{text}"
    );
    assert!(
        text.contains(&format!("max = 30000  # from config file {FILE}")),
        "{text}"
    );
    assert!(
        text.contains("# handle_resolver is unset (ATRUND_IDENTITY_HANDLE_RESOLVER)"),
        "{text}"
    );
    assert!(
        text.contains("# bundle_domain is unset (ATRUND_HTTP_BUNDLE_DOMAIN)"),
        "{text}"
    );
    assert!(text.contains("[limits.timeout_ms]"), "{text}");
    let again = load(Some(&text), &[]).unwrap();
    assert_eq!(again, c);
    let d = load(None, &[]).unwrap();
    assert_eq!(load(Some(&d.to_toml()), &[]).unwrap(), d);
}

#[test]
fn env_var_names_are_unique_and_contractual() {
    let vars = known_env_vars().unwrap();
    let mut names: Vec<&str> = vars.iter().map(|(v, _)| v.as_str()).collect();
    let n = names.len();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), n, "two keys map to the same variable");
    for must in [
        "ATRUND_LISTEN",
        "ATRUND_PLC_URL",
        "ATRUND_DATA_DIR",
        "ATRUND_ALLOW_HTTP",
        "ATRUND_ALLOW_ADDRS",
        "ATRUND_POLICY",
        "ATRUND_ISOLATION",
        "ATRUND_LIMITS_TIMEOUT_MS_DEFAULT",
        "ATRUND_DENO_PATH",
        "ATRUND_IDENTITY_HANDLE_RESOLVER",
    ] {
        assert!(names.contains(&must), "{must}");
    }
    // Every listed variable is accepted by the loader.
    for (var, key) in &vars {
        let e = load(None, &[(var.as_str(), "\u{1}")]);
        if let Err(e) = e {
            assert_ne!(e.code(), "ConfigUnknownEnv", "{var} ({key})");
        }
    }
}

#[test]
fn docs_list_every_variable_and_exception() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/configuration.md");
    let docs = std::fs::read_to_string(&path).unwrap();
    for (var, key) in known_env_vars().unwrap() {
        assert!(
            docs.contains(&format!("`{var}`")),
            "{var} ({key}) missing from docs"
        );
    }
    for e in atrund_config::ENV_EXCEPTIONS {
        assert!(docs.contains(&format!("`{e}`")), "{e} missing from docs");
    }
    // Every TOML example in the docs loads.
    let mut blocks = 0;
    for part in docs.split("```toml\n").skip(1) {
        let example = part.split("```").next().unwrap();
        let c = load(Some(example), &[]).unwrap_or_else(|e| panic!("{e}\n{example}"));
        assert_ne!(c, Config::default());
        blocks += 1;
    }
    assert!(blocks > 0);
}

#[test]
fn sandbox_run_as_defaults_to_nobody_is_overridable_and_never_root() {
    let c = load(None, &[]).unwrap();
    assert_eq!((c.sandbox.run_as_uid, c.sandbox.run_as_gid), (65534, 65534));
    let c = load(
        Some("[sandbox]\nrun_as_uid = 990\nrun_as_gid = 991\n"),
        &[("ATRUND_SANDBOX_RUN_AS_GID", "992")],
    )
    .unwrap();
    assert_eq!((c.sandbox.run_as_uid, c.sandbox.run_as_gid), (990, 992));
    for (var, key) in [
        ("ATRUND_SANDBOX_RUN_AS_UID", "sandbox.run_as_uid"),
        ("ATRUND_SANDBOX_RUN_AS_GID", "sandbox.run_as_gid"),
    ] {
        for bad in ["0", "4294967295"] {
            let e = err(None, &[(var, bad)]);
            assert_eq!((e.code(), e.key()), ("ConfigInvalid", Some(key)), "{bad}");
            assert!(e.to_string().contains("65534"), "{e}");
        }
        let e = err(None, &[(var, "-1")]);
        assert_eq!(e.key(), Some(key));
    }
    let e = err(Some("[sandbox]\nrun_as = 1\n"), &[]);
    assert!(e.to_string().contains("run_as_uid"), "{e}");
}

/// The keys of versions where only `none` switched uid are refused with their new names, in the
/// file and in the environment, rather than read under two names.
#[test]
fn none_run_as_keys_are_refused_with_their_new_names() {
    let e = err(Some("[none]\nrun_as_uid = 990\n"), &[]);
    assert_eq!(
        (e.code(), e.key()),
        ("ConfigMovedKey", Some("none.run_as_uid"))
    );
    assert!(e.to_string().contains("sandbox.run_as_uid"), "{e}");
    let e = err(Some("none.run_as_gid = 990\n"), &[]);
    assert!(e.to_string().contains("sandbox.run_as_gid"), "{e}");
    let e = err(None, &[("ATRUND_NONE_RUN_AS_UID", "990")]);
    assert_eq!(e.code(), "ConfigUnknownEnv");
    assert!(e.to_string().contains("ATRUND_SANDBOX_RUN_AS_UID"), "{e}");
    let e = err(Some("[none]\nother = 1\n"), &[]);
    assert_eq!(e.code(), "ConfigUnknownKey", "{e}");
}

#[test]
fn otel_is_off_by_default_and_its_standard_variables_are_read_only_when_on() {
    use atrund_config::OtelSampler;
    let c = load(None, &[("OTEL_TRACES_SAMPLER", "jaeger_remote")]).unwrap();
    assert!(!c.otel.enabled);
    assert_eq!(c.otel.endpoint, "http://localhost:4318/v1/traces");
    assert_eq!(c.otel.sampler, OtelSampler::ParentBasedTraceIdRatio);

    let on = [("ATRUND_OTEL_ENABLED", "1")];
    let c = load(
        None,
        &[
            on[0],
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
            ("OTEL_SERVICE_NAME", "runner-7"),
            ("OTEL_TRACES_SAMPLER", "always_on"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.5"),
        ],
    )
    .unwrap();
    assert_eq!(c.otel.endpoint, "http://collector:4318/v1/traces");
    assert_eq!(c.otel.service_name, "runner-7");
    assert_eq!(c.otel.sampler, OtelSampler::AlwaysOn);
    assert_eq!(c.otel.sampler_arg, 0.5);
    assert_eq!(
        c.source_of("otel.endpoint"),
        Source::Env("OTEL_EXPORTER_OTLP_ENDPOINT".into())
    );

    // The traces variable beats the generic one and is taken as it is.
    let c = load(
        None,
        &[
            on[0],
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4318"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "https://b/otlp/traces",
            ),
        ],
    )
    .unwrap();
    assert_eq!(c.otel.endpoint, "https://b/otlp/traces");

    // The operator's own keys (file, then ATRUND_OTEL_*) beat the standard variables.
    let file =
        "[otel]\nenabled = true\nendpoint = \"http://file:4318/v1/traces\"\nsampler_arg = 1\n";
    let c = load(
        Some(file),
        &[
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://std:4318/v1/traces",
            ),
            ("OTEL_TRACES_SAMPLER_ARG", "0.2"),
            ("OTEL_SERVICE_NAME", "std"),
            ("ATRUND_OTEL_SERVICE_NAME", "mine"),
        ],
    )
    .unwrap();
    assert_eq!(c.otel.endpoint, "http://file:4318/v1/traces");
    assert_eq!(c.otel.sampler_arg, 1.0);
    assert_eq!(c.otel.service_name, "mine");
    assert_eq!(c.source_of("otel.endpoint"), file_src());
}

#[test]
fn otel_values_are_checked() {
    let on = ("ATRUND_OTEL_ENABLED", "true");
    for (pairs, key) in [
        (
            vec![on, ("OTEL_TRACES_SAMPLER", "jaeger_remote")],
            "otel.sampler",
        ),
        (vec![("ATRUND_OTEL_SAMPLER_ARG", "1.5")], "otel.sampler_arg"),
        (
            vec![on, ("OTEL_TRACES_SAMPLER_ARG", "half")],
            "otel.sampler_arg",
        ),
        (
            vec![("ATRUND_OTEL_ENDPOINT", "localhost:4318")],
            "otel.endpoint",
        ),
        (
            vec![("ATRUND_OTEL_ENDPOINT", "ftp://x/v1/traces")],
            "otel.endpoint",
        ),
        (vec![("ATRUND_OTEL_QUEUE_SIZE", "0")], "otel.queue_size"),
        (vec![("ATRUND_OTEL_BATCH_SIZE", "5000")], "otel.batch_size"),
        (vec![("ATRUND_OTEL_SERVICE_NAME", " ")], "otel.service_name"),
    ] {
        let e = err(None, &pairs);
        assert!(e.to_string().contains(key), "{pairs:?}: {e}");
    }
    // A ratio from the file may be written as a whole number or a fraction.
    let c = load(Some("[otel]\nsampler_arg = 0\n"), &[]).unwrap();
    assert_eq!(c.otel.sampler_arg, 0.0);
}

#[test]
fn warmth_keys_load_and_are_checked() {
    let c = load(None, &[]).unwrap();
    assert_eq!(c.pool.warmth, atrund_config::Warmth::Fixed);
    assert_eq!(
        (c.pool.warmth_bin_ms, c.pool.warmth_range_ms),
        (60_000, 14_400_000)
    );
    let c = load(
        Some("[pool]\nwarmth = \"adaptive\"\nwarmth_bin_ms = 100\nwarmth_range_ms = 5000"),
        &[("ATRUND_POOL_WARMTH_MIN_SAMPLES", "3")],
    )
    .unwrap();
    assert_eq!(c.pool.warmth, atrund_config::Warmth::Adaptive);
    assert_eq!(c.pool.warmth_min_samples, 3);
    let e = err(Some("[pool]\nwarmth = \"smart\""), &[]);
    assert_eq!(e.key(), Some("pool.warmth"), "{e}");
    // Too few bins for the histogram test, and too many.
    let e = err(None, &[("ATRUND_POOL_WARMTH_RANGE_MS", "300000")]);
    assert_eq!(e.key(), Some("pool.warmth_range_ms"));
    assert!(e.to_string().contains("5 bins"), "{e}");
    let e = err(None, &[("ATRUND_POOL_WARMTH_BIN_MS", "1000")]);
    assert!(e.to_string().contains("14400 bins"), "{e}");
    let e = err(None, &[("ATRUND_POOL_WARMTH_BIN_MS", "0")]);
    assert_eq!(e.key(), Some("pool.warmth_bin_ms"));
    let e = err(None, &[("ATRUND_POOL_WARMTH_MARGIN_PERCENT", "95")]);
    assert_eq!(e.key(), Some("pool.warmth_margin_percent"));
    let e = err(None, &[("ATRUND_POOL_WARMTH_FORGET_SECS", "3600")]);
    assert_eq!(e.key(), Some("pool.warmth_forget_secs"));
}

#[test]
fn generic_python_sandboxes_need_python() {
    let e = err(None, &[("ATRUND_POOL_GENERIC_PYTHON_SANDBOXES", "2")]);
    assert_eq!(e.key(), Some("pool.generic_python_sandboxes"));
    assert!(e.to_string().contains("python.path"), "{e}");
    let e = err(
        None,
        &[
            ("ATRUND_POOL_GENERIC_PYTHON_SANDBOXES", "65"),
            ("ATRUND_PYTHON_PATH", "/usr/bin/python3.11"),
        ],
    );
    assert_eq!(e.key(), Some("pool.generic_python_sandboxes"));
    assert!(e.to_string().contains("Python process"), "{e}");
    let c = load(
        None,
        &[
            ("ATRUND_POOL_GENERIC_PYTHON_SANDBOXES", "2"),
            ("ATRUND_PYTHON_PATH", "/usr/bin/python3.11"),
        ],
    )
    .expect("valid");
    assert_eq!(c.pool.generic_python_sandboxes, 2);
}
