//! `at-run runners ls --from HANDLE...`: the runners that accounts the author names have
//! announced (`dev.atrund.runner`, written by `at-rund announce`), each record verified like any
//! record the runner itself fetches (the operator's DID document, signed commit, MST proof), then
//! the runner at the announced URL asked whether it is ready and whether its describeRunner still
//! says what the record says; with a project, whether the bundle would run there (the checks of
//! `at-run check`). docs/network.md.
//!
//! URLs taken from records are fetched through `atrund-netpolicy`'s guarded client with the
//! runner's address rules (https only, no private, loopback, link-local or metadata address
//! after DNS), so a record cannot point this CLI at the author's own network.
//!
//! Owns: that listing and its report. Must not touch: identity resolution or record
//! verification (`atrund-identity`, `atrund-repo`: the runner's own code, so the author's CLI
//! believes exactly what a runner would), the comparison (`runner::compare`), writes of any kind.

use std::time::Duration;

use anyhow::Context;
use atrund_api::{DescribeRunner, RunnerRecord, DESCRIBE_RUNNER, RUNNER_COLLECTION, RUNNER_RKEY};
use atrund_identity::{AtIdentifier, IdentityConfig, IdentityResolver};
use std::sync::Arc;

use atrund_netpolicy::{AddressPolicy, ClientConfig, GuardedClient, SystemResolver};
use atrund_repo::{FetchConfig, RepoClient};
use serde::Serialize;

use crate::runner::{self, CheckReport};

/// Where identities are resolved (`--plc`, `--handle-resolver`), shared by the commands that
/// find runners by their operator.
#[derive(Debug, Clone, clap::Args)]
pub struct NetArgs {
    /// The PLC directory for did:plc identities.
    #[arg(
        long = "plc",
        env = "ATRUN_PLC_URL",
        default_value = "https://plc.directory",
        value_name = "URL"
    )]
    pub plc_url: String,
    /// An XRPC service whose com.atproto.identity.resolveHandle is asked last, as a hint (the
    /// handle must still be claimed by the DID document it names).
    #[arg(long, env = "ATRUN_HANDLE_RESOLVER", value_name = "URL")]
    pub handle_resolver: Option<String>,
    /// Allow identities, PDSes and runners on this machine (http://localhost, 127.0.0.1):
    /// for a local test network only.
    #[arg(long, env = "ATRUN_ALLOW_LOOPBACK", hide = true)]
    pub allow_loopback: bool,
    /// Resolve handles only through --handle-resolver, with no DNS TXT or well-known look-up
    /// (a local test network's handles have no DNS).
    #[arg(long, env = "ATRUN_NO_DNS", hide = true)]
    pub no_dns: bool,
}

impl Default for NetArgs {
    /// As the command line's defaults: the public PLC directory, handles through DNS and
    /// well-known, nothing on this machine.
    fn default() -> Self {
        NetArgs {
            plc_url: "https://plc.directory".into(),
            handle_resolver: None,
            allow_loopback: false,
            no_dns: false,
        }
    }
}

impl NetArgs {
    fn policy(&self) -> anyhow::Result<AddressPolicy> {
        let mut p = AddressPolicy::default();
        if self.allow_loopback {
            p.allow_cidrs = vec!["127.0.0.0/8".parse()?, "::1/128".parse()?];
        }
        Ok(p)
    }

    fn resolver(&self) -> anyhow::Result<IdentityResolver> {
        let plc_url = reqwest::Url::parse(&self.plc_url)
            .with_context(|| format!("--plc '{}' is not a URL", self.plc_url))?;
        if plc_url.scheme() != "https" && !self.allow_loopback {
            anyhow::bail!(
                "--plc '{}' must be https (plain http only for a local test network, with ATRUN_ALLOW_LOOPBACK=1)",
                self.plc_url
            );
        }
        let handle_resolution_service = match &self.handle_resolver {
            Some(u) => Some(
                reqwest::Url::parse(u)
                    .with_context(|| format!("--handle-resolver '{u}' is not a URL"))?,
            ),
            None => None,
        };
        IdentityResolver::new(IdentityConfig {
            plc_url,
            allow_http_loopback: self.allow_loopback,
            address_policy: self.policy()?,
            timeout: Duration::from_secs(10),
            handle_resolution_service,
            dns: !self.no_dns,
            well_known: !self.no_dns,
            ..IdentityConfig::default()
        })
        .context("could not set up identity resolution")
    }

    /// The client for URLs taken from records: the same address rules as the runner's own
    /// requests (no private, loopback, link-local or metadata address, after DNS; https only),
    /// so a record cannot point this CLI at the author's own network.
    fn guarded(&self) -> anyhow::Result<GuardedClient> {
        GuardedClient::new(
            ClientConfig {
                timeout: Duration::from_secs(10),
                max_redirects: 0,
                allow_http_loopback: self.allow_loopback,
                extra_roots: Vec::new(),
            },
            self.policy()?,
            Arc::new(SystemResolver),
        )
        .context("could not set up the HTTP client")
    }

    fn repo(&self) -> anyhow::Result<RepoClient> {
        RepoClient::new(FetchConfig {
            allow_http_loopback: self.allow_loopback,
            address_policy: self.policy()?,
            ..FetchConfig::default()
        })
        .context("could not set up the record fetcher")
    }
}

/// One named operator and what was found of their runner.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Listed {
    /// As the author named them.
    pub operator: String,
    pub did: Option<String>,
    /// The verified record; `None` when they announce none or it could not be read.
    pub record: Option<RunnerRecord>,
    /// Why there is no verified record, or why the runner could not be asked.
    pub problem: Option<String>,
    /// `GET {endpoint}/readyz` answered 200.
    pub ready: bool,
    /// Where describeRunner and the record differ (empty: they agree).
    pub disagreements: Vec<String>,
    /// With a project: whether its bundle would run there.
    pub check: Option<CheckReport>,
    /// The runner's describeRunner as asked here (through the guarded client), so a caller
    /// that goes on to use the runner need not ask again. Not part of the listing's JSON.
    #[serde(skip)]
    pub describe: Option<DescribeRunner>,
}

/// A built bundle to check against each runner (as `at-run check` builds it). Its runtime is
/// given to [`list_for`] beside it ([`list`] checks a Deno bundle).
pub struct Bundle<'a> {
    pub manifest: &'a atrund_bundle::Manifest,
    pub code_bytes: u64,
    /// The Deno that built it.
    pub local_deno: &'a str,
    pub author: Option<(&'a str, &'a str)>,
}

/// The runner each of `from` announces, verified and asked; `bundle`, if given, is a Deno
/// bundle (see [`list_for`]).
pub async fn list(
    from: &[String],
    net: &NetArgs,
    bundle: Option<&Bundle<'_>>,
) -> anyhow::Result<Vec<Listed>> {
    list_for(from, net, bundle, crate::project::DEFAULT_RUNTIME).await
}

/// [`list`], checking `bundle` as a bundle for `runtime` (`deno` or `node`).
pub async fn list_for(
    from: &[String],
    net: &NetArgs,
    bundle: Option<&Bundle<'_>>,
    runtime: &str,
) -> anyhow::Result<Vec<Listed>> {
    let resolver = net.resolver()?;
    let repo = net.repo()?;
    let web = net.guarded()?;
    let mut out = Vec::new();
    for who in from {
        out.push(one(who, &resolver, &repo, &web, bundle.map(|b| (b, runtime))).await);
    }
    Ok(out)
}

async fn one(
    who: &str,
    resolver: &IdentityResolver,
    repo: &RepoClient,
    web: &GuardedClient,
    bundle: Option<(&Bundle<'_>, &str)>,
) -> Listed {
    let mut l = Listed {
        operator: who.to_string(),
        did: None,
        record: None,
        problem: None,
        ready: false,
        disagreements: Vec::new(),
        check: None,
        describe: None,
    };
    let id: AtIdentifier = match who.trim_start_matches('@').parse() {
        Ok(id) => id,
        Err(e) => {
            l.problem = Some(format!("'{who}' is not a handle or DID ({e})"));
            return l;
        }
    };
    let resolved = match resolver.resolve(&id).await {
        Ok((r, _)) => r,
        Err(e) => {
            l.problem = Some(format!("could not resolve '{who}': {e}"));
            return l;
        }
    };
    l.did = Some(resolved.did.to_string());
    let rec = match repo
        .get_record(
            &resolved.pds,
            resolved.did.as_str(),
            &resolved.signing_key,
            RUNNER_COLLECTION,
            RUNNER_RKEY,
        )
        .await
    {
        Ok(Some(v)) => match v.decode::<RunnerRecord>() {
            Ok(r) => r,
            Err(e) => {
                l.problem = Some(format!(
                    "their {RUNNER_COLLECTION} record does not read as one: {e}"
                ));
                return l;
            }
        },
        Ok(None) => {
            l.problem = Some(format!("announces no runner (no {RUNNER_COLLECTION}/{RUNNER_RKEY} record in their repository)"));
            return l;
        }
        Err(e) => {
            l.problem = Some(format!(
                "could not fetch and verify their runner record: {e}"
            ));
            return l;
        }
    };
    let endpoint = rec.endpoint.clone();
    l.record = Some(rec);
    let desc = match describe(web, &endpoint).await {
        Ok(d) => d,
        Err(e) => {
            l.problem = Some(e);
            return l;
        }
    };
    l.ready = ready(web, &endpoint).await;
    if let Some(rec) = &l.record {
        l.disagreements = rec.disagreements(&desc);
    }
    // A runner that does not say what its record says is not the announced one (or has
    // changed since): a verdict for the bundle would answer for the wrong runner.
    if let Some((b, runtime)) = bundle.filter(|_| l.disagreements.is_empty()) {
        let graph = match b.author {
            Some((did, _)) => standing(resolver, repo, &desc, did).await,
            None => None,
        };
        l.check = Some(runner::compare(
            &endpoint,
            &desc,
            b.manifest,
            b.code_bytes,
            runner::BundleRuntime {
                name: runtime,
                built_with: b.local_deno,
            },
            b.author,
            graph.as_ref(),
        ));
    }
    l.describe = Some(desc);
    l
}

/// The author's standing in the graph of a runner that trusts its operator's follows, read from
/// verified records as the runner reads them (`atrund-trust`): `None` when the runner trusts no
/// graph.
pub async fn graph_standing(
    desc: &DescribeRunner,
    author_did: &str,
    net: &NetArgs,
) -> anyhow::Result<Option<runner::GraphStanding>> {
    if desc.policy.graph.is_none() {
        return Ok(None);
    }
    Ok(standing(&net.resolver()?, &net.repo()?, desc, author_did).await)
}

async fn standing(
    resolver: &IdentityResolver,
    repo: &RepoClient,
    desc: &DescribeRunner,
    author_did: &str,
) -> Option<runner::GraphStanding> {
    let g = desc.policy.graph.as_ref()?;
    let operator = g.operator_did.as_deref().unwrap_or(&g.operator);
    let operator: AtIdentifier = match operator.parse() {
        Ok(o) => o,
        Err(e) => {
            return Some(runner::GraphStanding {
                followed: Err(format!("the runner names its operator '{operator}': {e}")),
                follows_back: None,
            })
        }
    };
    // The runner's default caps: what a runner reads unless its operator changed them.
    let caps = atrund_config::TrustSection::default();
    let read =
        atrund_trust::operator_follows(resolver, repo, &operator, caps.max_repo_bytes, None).await;
    let (followed, operator_did) = match read {
        Ok(f) => (Ok(f.follows.contains(author_did)), Some(f.operator)),
        Err(e) => (Err(e), None),
    };
    let follows_back = match (g.kind.as_str(), operator_did) {
        ("mutuals", Some(op)) => Some(match author_did.parse() {
            Ok(did) => match resolver.resolve(&AtIdentifier::Did(did)).await {
                Ok((author, _)) => atrund_trust::prove_follow_back(
                    repo,
                    &author,
                    &op,
                    usize::try_from(caps.max_follow_pages).unwrap_or(usize::MAX),
                )
                .await
                .map_err(|e| format!("reading your follows: {e}")),
                Err(e) => Err(format!("resolving you: {e}")),
            },
            Err(e) => Err(format!("'{author_did}': {e}")),
        }),
        ("mutuals", None) => Some(Err("the operator's follows were not read".into())),
        _ => None,
    };
    Some(runner::GraphStanding {
        followed,
        follows_back,
    })
}

/// A `--runner` value: a URL as given, or an operator's handle or DID (no `://`), whose
/// verified `dev.atrund.runner` record gives the URL and the key the runner must announce. A
/// runner named by its operator that does not say what the record says is refused.
pub async fn named(runner: &str, net: &NetArgs) -> anyhow::Result<Named> {
    if runner.contains("://") {
        return Ok(Named {
            url: runner.trim_end_matches('/').to_string(),
            record: None,
            describe: None,
        });
    }
    let l = one(
        runner,
        &net.resolver()?,
        &net.repo()?,
        &net.guarded()?,
        None,
    )
    .await;
    let Some(record) = l.record else {
        anyhow::bail!(
            "--runner '{runner}' is neither a URL nor an account that announces a runner: {}",
            l.problem.as_deref().unwrap_or("no runner record")
        );
    };
    if let Some(p) = l.problem {
        anyhow::bail!(
            "the runner that {runner} announces at {}: {p}",
            record.endpoint
        );
    }
    if !l.disagreements.is_empty() {
        anyhow::bail!(
            "the runner at {} does not say what {runner}'s record says ({}); do not use it until its operator announces it again",
            record.endpoint,
            l.disagreements.join("; ")
        );
    }
    Ok(Named {
        url: record.endpoint.clone(),
        record: Some(record),
        describe: l.describe,
    })
}

/// Where `--runner` points, and the operator's verified record when it was named by operator.
#[derive(Debug, Clone)]
pub struct Named {
    pub url: String,
    pub record: Option<RunnerRecord>,
    /// describeRunner as already asked (named by operator), else `None`.
    describe: Option<DescribeRunner>,
}

impl Named {
    /// The runner's describeRunner: the answer already checked against the operator's record
    /// when it was named by operator (no second request, so the name cannot move in between),
    /// else asked now at the URL.
    pub async fn describe(&self) -> anyhow::Result<DescribeRunner> {
        match &self.describe {
            Some(d) => Ok(d.clone()),
            None => runner::describe(&self.url).await,
        }
    }
}

/// `GET {endpoint}/readyz` answers 200 (through the guarded client).
async fn ready(web: &GuardedClient, endpoint: &str) -> bool {
    let Ok(url) = reqwest::Url::parse(&format!("{endpoint}/readyz")) else {
        return false;
    };
    matches!(web.get(&url, "text/plain").await, Ok(r) if r.status().is_success())
}

/// describeRunner at a URL taken from a record, through the guarded client; `Err` says why not,
/// for the report.
async fn describe(web: &GuardedClient, endpoint: &str) -> Result<DescribeRunner, String> {
    let url = reqwest::Url::parse(&format!("{endpoint}/xrpc/{DESCRIBE_RUNNER}"))
        .map_err(|e| format!("the announced URL {endpoint} is not a URL ({e})"))?;
    let resp = web
        .get(&url, "application/json")
        .await
        .map_err(|e| format!("the announced URL cannot be asked: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!(
            "{url} answered HTTP {}: not an at-rund runner, or not up",
            resp.status().as_u16()
        ));
    }
    let body = atrund_netpolicy::read_capped(resp, 1024 * 1024)
        .await
        .map_err(|e| format!("could not read {url}: {e}"))?;
    serde_json::from_slice(&body)
        .map_err(|e| format!("{url} is not a describeRunner this at-run reads ({e})"))
}

/// The report for people: one block per operator.
pub fn render(listed: &[Listed]) -> String {
    let mut s = String::new();
    for l in listed {
        let did = l
            .did
            .as_deref()
            .map(|d| format!(" ({d})"))
            .unwrap_or_default();
        match &l.record {
            None => {
                s.push_str(&format!(
                    "{}{did}: {}\n",
                    l.operator,
                    l.problem.as_deref().unwrap_or("no runner")
                ));
                continue;
            }
            Some(r) => {
                s.push_str(&format!("{}{did}: {}\n", l.operator, r.endpoint));
                s.push_str(&format!(
                    "  record     verified, updated {}\n",
                    r.updated_at
                ));
                let runtimes: Vec<String> = r.runtimes.iter().map(|x| x.version.clone()).collect();
                s.push_str(&format!(
                    "  announces  {} isolation, {}, policy {}, {} {}\n",
                    r.isolation,
                    runtimes.join("; "),
                    r.policy,
                    r.software.name,
                    r.software.version
                ));
            }
        }
        if let Some(p) = &l.problem {
            s.push_str(&format!("  runner     {p}\n"));
            continue;
        }
        s.push_str(if l.ready {
            "  runner     ready"
        } else {
            "  runner     NOT ready (/readyz)"
        });
        if l.disagreements.is_empty() {
            s.push_str(", describeRunner agrees with the record\n");
        } else {
            s.push_str(&format!(
                ", describeRunner DISAGREES: {}; do not seal secrets to it until its operator announces it again\n",
                l.disagreements.join("; ")
            ));
        }
        if let Some(c) = &l.check {
            let failed: Vec<String> = c
                .checks
                .iter()
                .filter(|x| !x.ok)
                .map(|x| format!("{}: {}", x.name, x.detail))
                .collect();
            if failed.is_empty() {
                s.push_str("  bundle     would run here\n");
            } else {
                s.push_str(&format!(
                    "  bundle     would NOT run here: {}\n",
                    failed.join("; ")
                ));
            }
        }
    }
    s
}
