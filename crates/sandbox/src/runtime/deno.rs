//! Deno as a runtime: finding the binary, asking its version, and the command line of one
//! instance ([`deno_args`]: hardened flags, and the manifest's permissions as Deno permission
//! flags, with every list item checked so that no item can widen a grant).
//!
//! Owns: the path resolution (configured path, else `deno` on PATH), the staged copy of a binary
//! the instances' uid cannot reach ([`DenoBinary::reachable_by`]) and Deno's flags. Must not:
//! install Deno, or decide which permissions a bundle gets (they arrive checked).
//! PATH is searched by hand (a dozen lines) rather than with the `which` crate to keep
//! dependencies down.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::seam::{
    check_net_entry, check_secret_names, path_str, Layout, Runtime, RuntimeKind, Shim,
};
use crate::{Enforcement, InstanceSpec, SandboxError};

/// The Deno shim (`runtime/exec/main.ts`).
pub(crate) const SHIM: Shim = Shim {
    file: "at-run-exec.ts",
    source: include_str!("../../../../runtime/exec/main.ts"),
};

/// A located Deno executable.
#[derive(Debug, Clone)]
pub struct DenoBinary {
    path: PathBuf,
}

impl DenoBinary {
    /// The configured path if given, else `deno` on PATH.
    pub fn locate(configured: Option<&Path>) -> Result<Self, SandboxError> {
        if let Some(p) = configured {
            return if crate::executables::is_executable(p) {
                Ok(Self {
                    path: p.to_path_buf(),
                })
            } else {
                Err(SandboxError::DenoNotFound(format!(
                    "'{}' is not an executable file",
                    p.display()
                )))
            };
        }
        crate::executables::find_executable("deno", &[])
            .map(|path| Self { path })
            .ok_or_else(|| SandboxError::DenoNotFound("no `deno` on PATH".into()))
    }

    /// Path of the executable.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// This binary, or a copy in `staged` when `id` cannot execute it where it is (a root runner
    /// whose Deno lives under `/root`, 0700). The copy is a hard link where the file system allows
    /// it, named by size and modification time, so an updated binary gets a new copy.
    pub fn reachable_by(self, id: crate::RunAs, staged: &Path) -> Result<Self, SandboxError> {
        let staged_copy =
            crate::hostfs::copy_if_unreachable(&self.path, id, 0o1, staged, "deno", 0o755)
                .map_err(|e| {
                    SandboxError::DenoNotFound(format!(
                        "'{}' cannot be run by the instances' uid {}, and no copy could be made in {} ({e}); install Deno where that user can run it (e.g. /usr/local/bin)",
                        self.path.display(),
                        id.uid,
                        staged.display()
                    ))
                })?;
        let Some((copy, why)) = staged_copy else {
            return Ok(self);
        };
        tracing::info!(deno = %self.path.display(), copy = %copy.display(), uid = id.uid, %why, "the instances' user cannot run Deno where it is: running a copy");
        Ok(Self { path: copy })
    }

    /// The version line, e.g. `deno 2.9.6 (stable, release, x86_64-unknown-linux-gnu)`.
    pub async fn version(&self) -> Result<String, SandboxError> {
        let out = tokio::process::Command::new(&self.path)
            .arg("--version")
            .env_clear()
            .env("NO_COLOR", "1")
            .env("DENO_NO_UPDATE_CHECK", "1")
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| {
                SandboxError::DenoNotFound(format!("'{}' did not run: {e}", self.path.display()))
            })?;
        let text = String::from_utf8_lossy(&out.stdout);
        match text.lines().next() {
            Some(line) if out.status.success() && line.starts_with("deno ") => {
                Ok(line.trim().to_string())
            }
            _ => Err(SandboxError::DenoNotFound(format!(
                "'{}' --version did not print a Deno version",
                self.path.display()
            ))),
        }
    }
}

/// `deno run` without prompts, remote code, npm, config or lock file: every instance's start,
/// generic sandboxes' too.
pub(crate) const HARDENED: [&str; 7] = [
    "run",
    "--no-prompt",
    "--no-remote",
    "--no-npm",
    "--cached-only",
    "--no-config",
    "--no-lock",
];

/// The Deno arguments for one instance, permissions included.
/// `scratch`: a dir it may also read and write (the container's `/tmp`).
pub(crate) fn deno_args(
    spec: &InstanceSpec,
    shim: &Path,
    socket: &Path,
    scratch: Option<&Path>,
) -> Result<Vec<OsString>, SandboxError> {
    let p = &spec.permissions;
    let socket_s = flag_item("socket path", path_str(socket)?)?;
    let bundle_s = flag_item("bundle path", path_str(&spec.bundle_file)?)?;
    let data = |rel: &String| -> Result<String, SandboxError> {
        let joined = spec.data_dir.join(rel);
        Ok(flag_item("data path", path_str(&joined)?)?.to_string())
    };

    let mut read = vec![bundle_s.to_string(), socket_s.to_string()];
    for r in &p.read {
        read.push(data(r)?);
    }
    let mut write = vec![socket_s.to_string()];
    for w in &p.write {
        write.push(data(w)?);
    }
    if let Some(dir) = scratch {
        let dir = flag_item("scratch dir", path_str(dir)?)?;
        read.push(dir.to_string());
        write.push(dir.to_string());
    }
    // Deno.serve({ path }) also asks for net access to `unix:<path>`.
    let mut net = vec![format!("unix:{socket_s}")];
    for n in &p.net {
        net.push(net_flag_item(n)?);
    }
    // The runner's reserved host, which the egress proxy answers itself (docs/jobs.md).
    if spec.runner_calls.is_some() {
        net.push(format!("{}:80", crate::RUNNER_HOST));
    }

    let mut args: Vec<OsString> = HARDENED.iter().map(OsString::from).collect();
    args.push(format!("--v8-flags=--max-old-space-size={}", spec.memory_mib).into());
    args.push(format!("--allow-read={}", read.join(",")).into());
    args.push(format!("--allow-write={}", write.join(",")).into());
    args.push(format!("--allow-net={}", net.join(",")).into());
    if !p.run.is_empty() {
        let run: Vec<&str> = p
            .run
            .iter()
            .map(|r| flag_item("run entry", r))
            .collect::<Result<_, _>>()?;
        args.push(format!("--allow-run={}", run.join(",")).into());
    }
    if p.ffi {
        args.push("--allow-ffi".into());
    }
    if p.sys {
        args.push("--allow-sys".into());
    }
    if !spec.env.is_empty() {
        // Checked names hold no comma: they are letters, digits and '_'.
        let names: Vec<&str> = spec.env.iter().map(|(k, _)| k.as_str()).collect();
        args.push(format!("--allow-env={}", names.join(",")).into());
    }
    args.push(shim.as_os_str().to_owned());
    args.push(spec.bundle_file.as_os_str().to_owned());
    args.push(socket.as_os_str().to_owned());
    Ok(args)
}

/// Deno splits permission lists at commas, so an item with one would widen the grant.
fn flag_item<'a>(what: &str, s: &'a str) -> Result<&'a str, SandboxError> {
    if s.is_empty() || s.contains([',', '\0', '\n']) {
        return Err(SandboxError::StartFailed(format!(
            "{what} '{s}' is empty or contains a comma or control character, which Deno's permission flags cannot express"
        )));
    }
    Ok(s)
}

/// A `net` entry as the egress proxy reads it, always `host:port` (a bare host is port 443):
/// Deno's own `--allow-net=host` would mean every port. Deno checks the URL's host, not the
/// proxy's, so the proxy itself needs no entry (both backends send fetch through it).
fn net_flag_item(entry: &str) -> Result<String, SandboxError> {
    Ok(check_net_entry(flag_item("net entry", entry)?)?.to_string())
}

/// Deno as a [`Runtime`].
#[derive(Debug, Clone)]
pub(crate) struct DenoRuntime {
    binary: DenoBinary,
}

impl DenoRuntime {
    pub(crate) fn new(binary: DenoBinary) -> Self {
        Self { binary }
    }

    pub(crate) fn binary_ref(&self) -> &DenoBinary {
        &self.binary
    }
}

impl Runtime for DenoRuntime {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Deno
    }

    fn binary(&self) -> &Path {
        self.binary.path()
    }

    fn shim(&self) -> Shim {
        SHIM
    }

    fn args(&self, l: &Layout<'_>) -> Result<Vec<OsString>, SandboxError> {
        check_secret_names(self, &l.spec.env)?;
        deno_args(l.spec, l.shim, l.socket, l.scratch)
    }

    fn env(&self, cache: &Path, scratch: Option<&Path>) -> Vec<(&'static str, OsString)> {
        let mut env = vec![
            ("DENO_DIR", cache.as_os_str().to_owned()),
            ("DENO_NO_UPDATE_CHECK", "1".into()),
            ("NO_COLOR", "1".into()),
        ];
        // Deno looks for its home dir; the bundle cannot read HOME (--allow-env).
        if let Some(dir) = scratch {
            env.push(("HOME", dir.as_os_str().to_owned()));
        }
        env
    }

    fn reserved_env(&self, name: &str) -> bool {
        name.starts_with("DENO_") || name == "NO_COLOR"
    }

    fn enforcement(&self) -> Vec<Enforcement> {
        let line = |limit, how: &str| Enforcement {
            limit,
            enforced: true,
            how: how.into(),
        };
        vec![
            line("deno.read", "--allow-read/--allow-write of exactly the declared paths, beneath the kernel layer"),
            line("deno.net", "--allow-net of the declared host:port entries, then the egress proxy"),
            line("deno.run", "--allow-run of the declared commands"),
            line("deno.env", "--allow-env of the secret names only, on a cleared environment"),
            line("deno.ffi", "--allow-ffi only when declared"),
            line("deno.sys", "--allow-sys only when declared"),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_configured_path_says_how_to_install() {
        let err = DenoBinary::locate(Some(Path::new("/nonexistent/deno"))).unwrap_err();
        assert_eq!(err.code(), "DenoNotFound");
        assert!(err.to_string().contains("/nonexistent/deno"));
        assert!(err.to_string().contains("npm install deno@2.9.6"));
    }
}

#[cfg(test)]
mod args_tests {
    use std::time::Duration;

    use super::*;

    fn spec() -> InstanceSpec {
        InstanceSpec {
            id: "i1".into(),
            runtime: crate::RuntimeKind::Deno,
            bundle_file: "/store/ab.js".into(),
            work_dir: "/run/w/i1".into(),
            data_dir: "/data/b".into(),
            deno_dir: "/deno/b".into(),
            permissions: Default::default(),
            env: vec![],
            memory_mib: 128,
            request_timeout: Duration::from_secs(1),
            start_timeout: Duration::from_secs(1),
            limits: Default::default(),
            output: None,
            runner_calls: None,
        }
    }

    fn args(s: &InstanceSpec) -> Result<Vec<String>, SandboxError> {
        let rt = DenoRuntime::new(DenoBinary {
            path: "/bin/deno".into(),
        });
        Ok(rt
            .args(&Layout {
                spec: s,
                shim: Path::new("/run/w/i1/shim.ts"),
                socket: Path::new("/run/w/i1/s.sock"),
                scratch: None,
            })?
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect())
    }

    #[test]
    fn minimal_flags() {
        let a = args(&spec()).unwrap();
        for f in [
            "--no-prompt",
            "--no-remote",
            "--no-npm",
            "--cached-only",
            "--no-config",
            "--no-lock",
            "--v8-flags=--max-old-space-size=128",
            "--allow-read=/store/ab.js,/run/w/i1/s.sock",
            "--allow-write=/run/w/i1/s.sock",
            "--allow-net=unix:/run/w/i1/s.sock",
        ] {
            assert!(a.contains(&f.to_string()), "{f} missing in {a:?}");
        }
        assert!(!a.iter().any(|x| x.starts_with("--allow-env")
            || x.starts_with("--allow-run")
            || x == "--allow-all"
            || x == "-A"
            || x == "--allow-sys"
            || x == "--allow-ffi"));
        assert_eq!(
            &a[a.len() - 3..],
            ["/run/w/i1/shim.ts", "/store/ab.js", "/run/w/i1/s.sock"]
        );
    }

    #[test]
    fn manifest_permissions_become_flags() {
        let mut s = spec();
        s.permissions.net = vec!["example.com:443".into(), "Api.Example.com".into()];
        s.permissions.read = vec!["in".into()];
        s.permissions.write = vec!["out/x".into()];
        s.permissions.run = vec!["ffmpeg".into()];
        s.permissions.sys = true;
        s.permissions.ffi = true;
        s.env = vec![("API_KEY".into(), "secret-value".into())];
        let a = args(&s).unwrap();
        for f in [
            "--allow-read=/store/ab.js,/run/w/i1/s.sock,/data/b/in",
            "--allow-write=/run/w/i1/s.sock,/data/b/out/x",
            "--allow-net=unix:/run/w/i1/s.sock,example.com:443,api.example.com:443",
            "--allow-run=ffmpeg",
            "--allow-sys",
            "--allow-ffi",
            "--allow-env=API_KEY",
        ] {
            assert!(a.contains(&f.to_string()), "{f} missing in {a:?}");
        }
        assert!(!a.iter().any(|x| x.contains("secret-value")));
    }

    #[test]
    fn commas_and_bad_env_names_are_refused() {
        let mut s = spec();
        s.permissions.read = vec!["a,/etc".into()];
        assert_eq!(args(&s).unwrap_err().code(), "StartFailed");
        let mut s = spec();
        s.permissions.net = vec!["a.com,b.com".into()];
        assert!(args(&s).is_err());
        let mut s = spec();
        s.data_dir = "/data/x,/etc".into();
        s.permissions.write = vec!["w".into()];
        assert!(args(&s).is_err());
        let mut s = spec();
        s.permissions.net = vec!["*.example.com".into()];
        assert!(args(&s).is_err());
        for bad in [
            "DENO_DIR",
            "LD_PRELOAD",
            "A,B",
            "",
            "1X",
            "A=B",
            "NO_COLOR",
            "https_proxy",
            "HTTP_PROXY",
            "NO_PROXY",
        ] {
            let mut s = spec();
            s.env = vec![(bad.into(), "v".into())];
            let e = args(&s).unwrap_err();
            assert!(!e.to_string().contains("=v"), "{e}");
        }
    }
}
