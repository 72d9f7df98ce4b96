//! Firecracker's API client against a stand-in server on a Unix socket (Firecracker itself
//! cannot be obtained or booted on this machine kind: docs/microvm.md): the requests, their
//! order and bodies, and Firecracker's error answers.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use atrund_microvm::firecracker::{
    Api, BootSource, Drive, Entropy, FirecrackerError, MachineConfig, VmConfig, Vsock,
    DEFAULT_BOOT_ARGS,
};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;

type Seen = Arc<Mutex<Vec<(String, String, serde_json::Value)>>>;

/// Records each request; refuses `PUT /boot-source` when the kernel is "missing", as
/// Firecracker does.
async fn record(State(seen): State<Seen>, req: Request) -> axum::response::Response {
    let (method, path) = (req.method().to_string(), req.uri().path().to_string());
    let body = axum::body::to_bytes(req.into_body(), 1 << 20)
        .await
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    seen.lock()
        .unwrap()
        .push((method, path.clone(), json.clone()));
    if path == "/boot-source" && json["kernel_image_path"] == "missing" {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(serde_json::json!({"fault_message": "Boot source error: The kernel file cannot be opened: No such file or directory (os error 2)"})),
        )
            .into_response();
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn server(dir: &std::path::Path) -> (std::path::PathBuf, Seen) {
    let path = dir.join("fc.sock");
    let seen: Seen = Arc::default();
    let app = axum::Router::new()
        .fallback(record)
        .with_state(seen.clone());
    let l = tokio::net::UnixListener::bind(&path).unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });
    (path, seen)
}

fn vm(kernel: &str) -> VmConfig {
    VmConfig {
        boot_source: BootSource {
            kernel_image_path: kernel.into(),
            initrd_path: None,
            boot_args: format!("{DEFAULT_BOOT_ARGS} init=/sbin/init"),
        },
        drives: vec![Drive {
            drive_id: "rootfs".into(),
            path_on_host: "root.img".into(),
            is_root_device: true,
            is_read_only: true,
        }],
        machine_config: MachineConfig {
            vcpu_count: 1,
            mem_size_mib: 256,
            smt: false,
        },
        vsock: Some(Vsock {
            guest_cid: 3,
            uds_path: "v.sock".into(),
        }),
        entropy: Some(Entropy {}),
    }
}

#[tokio::test]
async fn configure_then_start_sends_firecrackers_sequence() {
    let d = tempfile::tempdir().unwrap();
    let (sock, seen) = server(d.path()).await;
    let api = Api::new(&sock, Duration::from_secs(5));
    api.configure(&vm("vmlinux")).await.unwrap();
    api.start().await.unwrap();
    api.set_paused(true).await.unwrap();
    api.set_paused(false).await.unwrap();
    let seen = seen.lock().unwrap().clone();
    let calls: Vec<(&str, &str)> = seen
        .iter()
        .map(|(m, p, _)| (m.as_str(), p.as_str()))
        .collect();
    assert_eq!(
        calls,
        vec![
            ("PUT", "/machine-config"),
            ("PUT", "/boot-source"),
            ("PUT", "/drives/rootfs"),
            ("PUT", "/vsock"),
            ("PUT", "/entropy"),
            ("PUT", "/actions"),
            ("PATCH", "/vm"),
            ("PATCH", "/vm"),
        ]
    );
    assert_eq!(
        seen[0].2,
        serde_json::json!({"vcpu_count": 1, "mem_size_mib": 256, "smt": false})
    );
    assert_eq!(seen[2].2["is_read_only"], true);
    assert_eq!(
        seen[3].2,
        serde_json::json!({"guest_cid": 3, "uds_path": "v.sock"})
    );
    assert_eq!(
        seen[5].2,
        serde_json::json!({"action_type": "InstanceStart"})
    );
    assert_eq!(seen[6].2, serde_json::json!({"state": "Paused"}));
    assert_eq!(seen[7].2, serde_json::json!({"state": "Resumed"}));
}

#[tokio::test]
async fn a_refusal_carries_firecrackers_fault_message_and_stops_the_sequence() {
    let d = tempfile::tempdir().unwrap();
    let (sock, seen) = server(d.path()).await;
    let api = Api::new(&sock, Duration::from_secs(5));
    let e = api.configure(&vm("missing")).await.unwrap_err();
    match &e {
        FirecrackerError::Refused {
            method,
            path,
            status,
            fault,
        } => {
            assert_eq!(
                (*method, path.as_str(), *status),
                ("PUT", "/boot-source", 400)
            );
            assert!(fault.contains("kernel file cannot be opened"), "{fault}");
        }
        other => panic!("{other}"),
    }
    // Nothing after the refused request was sent.
    assert_eq!(seen.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn an_invalid_description_sends_nothing_and_a_dead_socket_says_so() {
    let d = tempfile::tempdir().unwrap();
    let (sock, seen) = server(d.path()).await;
    let api = Api::new(&sock, Duration::from_secs(5));
    let mut bad = vm("vmlinux");
    bad.machine_config.vcpu_count = 0;
    assert!(matches!(
        api.configure(&bad).await,
        Err(FirecrackerError::Invalid(_))
    ));
    assert!(seen.lock().unwrap().is_empty());
    let gone = Api::new(&d.path().join("none.sock"), Duration::from_secs(5));
    let e = gone.start().await.unwrap_err();
    assert!(matches!(e, FirecrackerError::Socket { .. }), "{e}");
    assert!(e.to_string().contains("is Firecracker running"), "{e}");
}
