use super::*;

fn manifest(json: &str) -> Manifest {
    serde_json::from_str(json).unwrap()
}

fn allow(list: &[&str]) -> AuthorPolicy {
    AuthorPolicy::AllowList(list.iter().map(|s| s.to_string()).collect())
}

#[test]
fn open_policy_allows_anyone() {
    assert_eq!(check_author(&AuthorPolicy::Open, "did:plc:x", None), Ok(()));
}

#[test]
fn empty_allow_list_is_closed_and_says_how_to_open_it() {
    let e = check_author(&AuthorPolicy::default(), "did:plc:x", Some("a.test")).unwrap_err();
    assert_eq!(e, PolicyError::PolicyClosed);
    assert_eq!((e.code(), e.class().status()), ("PolicyClosed", 403));
    let msg = e.to_string();
    assert!(
        msg.contains("ATRUND_POLICY=open") && msg.contains("DIDs/handles"),
        "{msg}"
    );
}

#[test]
fn allow_list_matches_did_exactly_and_verified_handle_case_insensitively() {
    let p = allow(&["did:plc:abc", "Alice.Test"]);
    assert_eq!(check_author(&p, "did:plc:abc", None), Ok(()));
    assert_eq!(
        check_author(&p, "did:plc:other", Some("alice.test")),
        Ok(())
    );
    assert_eq!(
        check_author(&p, "did:plc:other", Some("ALICE.TEST.")),
        Ok(())
    );
    // DIDs are case-sensitive.
    assert!(check_author(&p, "did:plc:ABC", None).is_err());
    // A handle entry never matches a DID, and an unverified handle is not given.
    assert!(check_author(&p, "did:plc:other", None).is_err());
    // A DID entry is never matched by a handle that looks like it.
    let p2 = allow(&["did:plc:abc"]);
    assert!(check_author(&p2, "did:plc:zzz", Some("did:plc:abc")).is_err());

    let e = check_author(&p, "did:plc:zzz", Some("bob.test")).unwrap_err();
    assert_eq!((e.code(), e.class().status()), ("AuthorNotAllowed", 403));
    let msg = e.to_string();
    assert!(
        msg.contains("did:plc:zzz (bob.test)")
            && msg.contains("ATRUND_POLICY")
            && msg.contains("\"open\""),
        "{msg}"
    );
    let e = check_author(&p, "did:plc:zzz", None).unwrap_err();
    assert!(e.to_string().contains("author did:plc:zzz may not"), "{e}");
}

#[test]
fn defaults_apply_when_nothing_is_asked() {
    let limits = LimitsSection::default();
    let eff = check_manifest(&PermissionCaps::default(), &limits, &Manifest::default()).unwrap();
    assert_eq!(
        eff,
        EffectiveLimits {
            timeout_ms: limits.timeout_ms.default,
            memory_mib: limits.memory_mib.default,
            cpu_ms: limits.cpu_ms.default,
            concurrency: limits.concurrency.default,
        }
    );
}

#[test]
fn requests_up_to_max_are_granted_exactly() {
    let m = manifest(
        r#"{"limits":{"timeoutMs":60000,"memoryMib":64,"cpuMs":1,"concurrency":64},
            "permissions":{"net":["example.com:443"],"read":["cache"],"write":["cache"]}}"#,
    );
    let eff = check_manifest(&PermissionCaps::default(), &LimitsSection::default(), &m).unwrap();
    assert_eq!(
        eff,
        EffectiveLimits {
            timeout_ms: 60_000,
            memory_mib: 64,
            cpu_ms: 1,
            concurrency: 64
        }
    );
}

#[test]
fn each_limit_above_max_is_refused_not_reduced() {
    let limits = LimitsSection::default();
    for (field, name, max) in [
        ("timeoutMs", "limits.timeoutMs", limits.timeout_ms.max),
        ("memoryMib", "limits.memoryMib", limits.memory_mib.max),
        ("cpuMs", "limits.cpuMs", limits.cpu_ms.max),
        ("concurrency", "limits.concurrency", limits.concurrency.max),
    ] {
        let m = manifest(&format!(r#"{{"limits":{{"{field}":{}}}}}"#, max + 1));
        let e = check_manifest(&PermissionCaps::default(), &limits, &m).unwrap_err();
        assert_eq!(
            e,
            PolicyError::LimitTooHigh {
                limit: name.into(),
                requested: max + 1,
                max
            }
        );
        assert_eq!((e.code(), e.class().status()), ("LimitTooHigh", 403));
        let msg = e.to_string();
        assert!(
            msg.contains(name)
                && msg.contains(&(max + 1).to_string())
                && msg.contains(&max.to_string()),
            "{msg}"
        );
    }
    let m = manifest(r#"{"tasks":[{"name":"sync","concurrency":65}]}"#);
    let e = check_manifest(&PermissionCaps::default(), &limits, &m).unwrap_err();
    assert!(
        e.to_string().contains("tasks['sync'].concurrency = 65"),
        "{e}"
    );
    let m = manifest(r#"{"tasks":[{"name":"sync","concurrency":64}]}"#);
    assert!(check_manifest(&PermissionCaps::default(), &limits, &m).is_ok());
    let over = limits.timeout_ms.max + 1;
    let m = manifest(&format!(
        r#"{{"tasks":[{{"name":"sync","timeoutMs":{over}}}]}}"#
    ));
    let e = check_manifest(&PermissionCaps::default(), &limits, &m).unwrap_err();
    assert!(
        e.to_string()
            .contains(&format!("tasks['sync'].timeoutMs = {over}")),
        "{e}"
    );
}

#[test]
fn net_read_write_refused_when_not_granted() {
    let limits = LimitsSection::default();
    for (perm, json) in [
        (
            "net",
            r#"{"permissions":{"net":["a.example:443","b.example"]}}"#,
        ),
        ("read", r#"{"permissions":{"read":["data"]}}"#),
        ("write", r#"{"permissions":{"write":["data"]}}"#),
    ] {
        let mut caps = PermissionCaps::default();
        let m = manifest(json);
        assert!(
            check_manifest(&caps, &limits, &m).is_ok(),
            "{perm} granted by default"
        );
        match perm {
            "net" => caps.net = false,
            "read" => caps.read = false,
            _ => caps.write = false,
        }
        let e = check_manifest(&caps, &limits, &m).unwrap_err();
        assert_eq!(
            (e.code(), e.class().status()),
            ("PermissionNotAllowed", 403)
        );
        match &e {
            PolicyError::PermissionNotAllowed {
                permission,
                requested,
                allowed,
            } => {
                assert_eq!(permission, perm);
                assert!(requested.starts_with(&format!("{perm}: '")), "{requested}");
                assert_eq!(allowed, "none");
            }
            other => panic!("{other:?}"),
        }
        // Asking for nothing of it is fine even when it is not granted.
        assert!(check_manifest(&caps, &limits, &Manifest::default()).is_ok());
    }
    let caps = PermissionCaps {
        net: false,
        ..Default::default()
    };
    let e = check_manifest(
        &caps,
        &limits,
        &manifest(r#"{"permissions":{"net":["a.example:443","b.example"]}}"#),
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("net: 'a.example:443', 'b.example'"),
        "{e}"
    );
}

#[test]
fn run_commands_must_be_listed() {
    let limits = LimitsSection::default();
    let m = manifest(r#"{"permissions":{"run":["ffmpeg"]}}"#);
    let e = check_manifest(&PermissionCaps::default(), &limits, &m).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("run: 'ffmpeg'") && msg.contains("run: none"),
        "{msg}"
    );

    let mut caps = PermissionCaps {
        run: vec!["convert".into(), "git".into()],
        ..Default::default()
    };
    let e = check_manifest(&caps, &limits, &m).unwrap_err();
    assert!(e.to_string().contains("run: 'convert', 'git'"), "{e}");

    caps.run.push("ffmpeg".into());
    assert!(check_manifest(&caps, &limits, &m).is_ok());
    let m2 = manifest(r#"{"permissions":{"run":["ffmpeg","curl"]}}"#);
    let e = check_manifest(&caps, &limits, &m2).unwrap_err();
    assert!(e.to_string().contains("run: 'curl'"), "{e}");
}

#[test]
fn ffi_and_sys_refused_unless_granted() {
    let limits = LimitsSection::default();
    for (perm, json) in [
        ("ffi", r#"{"permissions":{"ffi":true}}"#),
        ("sys", r#"{"permissions":{"sys":true}}"#),
    ] {
        let m = manifest(json);
        let e = check_manifest(&PermissionCaps::default(), &limits, &m).unwrap_err();
        assert_eq!(
            e,
            PolicyError::PermissionNotAllowed {
                permission: perm.into(),
                requested: format!("{perm}: true"),
                allowed: "false".into()
            }
        );
        let caps = PermissionCaps {
            ffi: true,
            sys: true,
            ..Default::default()
        };
        assert!(check_manifest(&caps, &limits, &m).is_ok());
    }
}

#[test]
fn malformed_manifest_is_refused() {
    let m = manifest(r#"{"limits":{"timeoutMs":0}}"#);
    let e = check_manifest(&PermissionCaps::default(), &LimitsSection::default(), &m).unwrap_err();
    assert_eq!((e.code(), e.class().status()), ("BundleInvalid", 502));
    assert!(e.to_string().contains("timeoutMs"), "{e}");
}

#[test]
fn precheck_refuses_unlisted_identifiers_without_resolving() {
    // open: everything is resolved (the address policy guards the requests)
    assert_eq!(
        precheck_author(&AuthorPolicy::Open, "did:web:x.example"),
        Ok(Precheck::Resolve)
    );
    assert_eq!(
        precheck_author(&AuthorPolicy::default(), "did:plc:x"),
        Err(PolicyError::PolicyClosed)
    );
    // only DIDs listed: an unlisted DID or any unlisted handle is refused outright
    let dids = allow(&["did:plc:abc", "did:web:a.example"]);
    assert_eq!(precheck_author(&dids, "did:plc:abc"), Ok(Precheck::Resolve));
    let e = precheck_author(&dids, "did:web:localhost%3A22").unwrap_err();
    assert_eq!((e.code(), e.class().status()), ("AuthorNotAllowed", 403));
    assert!(e.to_string().contains("did:web:localhost%3A22"), "{e}");
    // ...but an unlisted handle may be a listed DID's: the listed DIDs are what get resolved
    assert_eq!(
        precheck_author(&dids, "bob.example.com"),
        Ok(Precheck::ViaListed(vec![
            "did:plc:abc",
            "did:web:a.example"
        ]))
    );
    // only handles listed: a listed handle is resolved (case-insensitive, trailing dot)
    let handles = allow(&["Alice.Example.com"]);
    assert_eq!(
        precheck_author(&handles, "alice.example.com."),
        Ok(Precheck::Resolve)
    );
    assert_eq!(
        precheck_author(&handles, "evil.example.com")
            .unwrap_err()
            .code(),
        "AuthorNotAllowed"
    );
    // an unlisted DID may be the listed handle's DID: the listed handles get resolved
    assert_eq!(
        precheck_author(&handles, "did:plc:zzz"),
        Ok(Precheck::ViaListed(vec!["Alice.Example.com"]))
    );
    // a handle entry never counts as listing a DID string, nor a DID entry a handle
    assert_eq!(
        precheck_author(&allow(&["did:plc:abc"]), "did:plc:abd")
            .unwrap_err()
            .code(),
        "AuthorNotAllowed"
    );
}

#[test]
fn the_deny_list_matches_dids_exactly_and_verified_handles_loosely() {
    let deny = vec!["did:plc:bad".to_string(), "Mallory.Test".to_string()];
    let e = check_denied(&deny, "did:plc:bad", None).unwrap_err();
    assert_eq!(e.code(), "AuthorDenied");
    assert!(e.to_string().contains("trust.deny"), "{e}");
    let e = check_denied(&deny, "did:plc:m", Some("mallory.test.")).unwrap_err();
    assert_eq!(e.code(), "AuthorDenied");
    assert!(e.to_string().contains("(mallory.test.)"), "{e}");
    assert_eq!(check_denied(&deny, "did:plc:BAD", None), Ok(()));
    assert_eq!(
        check_denied(&deny, "did:plc:ok", Some("alice.test")),
        Ok(())
    );
    assert_eq!(check_denied(&[], "did:plc:bad", None), Ok(()));
    // A handle entry never matches an unverified (absent) handle.
    assert_eq!(check_denied(&deny, "did:plc:m", None), Ok(()));
}

#[test]
fn the_graph_may_overturn_only_the_lists_refusals() {
    let not_listed = check_author(&allow(&["did:plc:a"]), "did:plc:b", None).unwrap_err();
    assert!(graph_may_admit(&not_listed));
    assert!(graph_may_admit(&PolicyError::PolicyClosed));
    assert!(!graph_may_admit(&PolicyError::AuthorDenied {
        did: "did:plc:b".into(),
        handle: None
    }));
    let e = PolicyError::NotInGraph {
        did: "did:plc:b".into(),
        handle: Some("b.test".into()),
        reason: "the operator's account op.test does not follow them".into(),
    };
    assert_eq!(e.code(), "AuthorNotAllowed");
    assert_eq!(e.class(), atrund_errors::ErrorClass::Forbidden);
    assert!(
        e.to_string().contains("op.test does not follow them"),
        "{e}"
    );
}
