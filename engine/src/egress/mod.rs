//! Mediated egress beyond the gateway: the destinations a run's **egress profiles** name, and
//! nothing else, through cogward's egress proxy ([`proxy`]).
//!
//! A profile is data: a name and the `host`/`ports` pairs it allows (`host` exact, or
//! `*.suffix` for any name under it). The built-in catalog (`catalog.json`: npm, PyPI,
//! crates.io, GitHub, Debian) is extended or overridden by the installation's egress
//! configuration (`COGWARD_EGRESS_CONFIG`, default `<state-dir>/egress.json`), which may also
//! map names to addresses (`hosts`) — an internal mirror, or the loopback servers of tests.
//! A run's spec lists the profiles it needs (`egress`); the run-admission policy decides which
//! a tenant may use; the proxy checks every connection against the run's admitted profiles.
//!
//! Names are resolved by the proxy, never by the agent (the sandbox has no DNS): a name from
//! `hosts` maps as configured; any other is looked up, and an answer that is not a public
//! address (loopback, private, link-local, shared, multicast...) is refused, so an allowed
//! name cannot be pointed at the engine or the host's network. The connection goes to the
//! address the proxy resolved (pinned): what the agent sends afterwards cannot redirect it.

pub mod proxy;

use anyhow::{Context, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

const CATALOG: &str = include_str!("catalog.json");

/// One allowed destination.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Allow {
    pub host: String,
    pub ports: Vec<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    #[serde(default)]
    pub description: String,
    pub allow: Vec<Allow>,
}

/// The catalog plus the installation's profiles and name mappings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressConfig {
    #[serde(default)]
    pub profiles: BTreeMap<String, Profile>,
    /// Name → addresses, used instead of DNS (and trusted: they may be private).
    #[serde(default)]
    pub hosts: BTreeMap<String, Vec<IpAddr>>,
}

impl EgressConfig {
    /// The built-in catalog, with `path`'s profiles over it (a missing file adds nothing).
    pub fn load(path: &Path) -> Result<EgressConfig> {
        let mut config: EgressConfig =
            serde_json::from_str(CATALOG).context("the built-in egress catalog")?;
        match std::fs::read(path) {
            Ok(bytes) => {
                let own: EgressConfig = serde_json::from_slice(&bytes)
                    .with_context(|| format!("parsing {}", path.display()))?;
                config.profiles.extend(own.profiles);
                config.hosts = own
                    .hosts
                    .into_iter()
                    .map(|(k, v)| (k.to_ascii_lowercase(), v))
                    .collect();
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        }
        for (name, profile) in &config.profiles {
            for a in &profile.allow {
                anyhow::ensure!(
                    valid_pattern(&a.host) && !a.ports.is_empty(),
                    "egress profile {name}: {:?} with ports {:?} is not a host name (or *.suffix) with ports",
                    a.host,
                    a.ports
                );
            }
        }
        Ok(config)
    }

    /// Which of `profiles` allows `host:port` (the first that does), or why none does.
    pub fn check<'a>(
        &self,
        profiles: &'a [String],
        host: &str,
        port: u16,
    ) -> Result<&'a str, String> {
        if host.parse::<IpAddr>().is_ok() {
            return Err(format!(
                "{host} is an address: only names an egress profile allows are reachable"
            ));
        }
        let host = host.to_ascii_lowercase();
        if profiles.is_empty() {
            return Err("the run has no egress profile".into());
        }
        for name in profiles {
            let Some(profile) = self.profiles.get(name) else {
                continue;
            };
            if profile
                .allow
                .iter()
                .any(|a| a.ports.contains(&port) && host_matches(&a.host, &host))
            {
                return Ok(name);
            }
        }
        Err(format!(
            "{host}:{port} is not allowed by the run's egress profiles ({})",
            profiles.join(", ")
        ))
    }
}

fn valid_pattern(p: &str) -> bool {
    let name = p.strip_prefix("*.").unwrap_or(p);
    !name.is_empty()
        && name.len() <= 253
        && name
            .split('.')
            .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
}

/// `pattern` is a name, or `*.suffix` (any name below `suffix`, not `suffix` itself).
pub fn host_matches(pattern: &str, host: &str) -> bool {
    let pattern = pattern.to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(suffix) => host
            .strip_suffix(suffix)
            .is_some_and(|rest| rest.ends_with('.') && rest.len() > 1),
        None => pattern == host,
    }
}

/// Addresses a looked-up name may not resolve to: anything that is not the public Internet.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (64..128).contains(&o[1]))
                || (o[0] == 198 && (o[1] == 18 || o[1] == 19))
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80)
        }
    }
}

/// Where `host:port` goes: the configured mapping, or DNS with only public answers.
pub async fn resolve(config: &EgressConfig, host: &str, port: u16) -> Result<SocketAddr, String> {
    let host = host.to_ascii_lowercase();
    if let Some(ips) = config.hosts.get(&host) {
        return ips
            .first()
            .map(|ip| SocketAddr::new(*ip, port))
            .ok_or_else(|| format!("{host} maps to no address"));
    }
    let answers: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| format!("{host} does not resolve: {e}"))?
        .collect();
    answers
        .iter()
        .copied()
        .find(|a| is_public(a.ip()))
        .ok_or_else(|| {
            if answers.is_empty() {
                format!("{host} does not resolve")
            } else {
                format!("{host} resolves only to non-public addresses ({answers:?})")
            }
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_catalog_loads_and_the_installation_extends_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("egress.json");
        let base = EgressConfig::load(&path).unwrap();
        for p in ["npm-registry", "pypi", "crates-io", "github", "debian"] {
            assert!(base.profiles.contains_key(p), "{p}");
        }
        std::fs::write(
            &path,
            r#"{"profiles": {"mirror": {"allow": [{"host": "*.mirror.test", "ports": [8443]}]}},
                "hosts": {"Pkg.Mirror.Test": ["10.0.0.5"]}}"#,
        )
        .unwrap();
        let c = EgressConfig::load(&path).unwrap();
        assert!(c.profiles.contains_key("pypi") && c.profiles.contains_key("mirror"));
        assert_eq!(
            c.hosts["pkg.mirror.test"],
            ["10.0.0.5".parse::<IpAddr>().unwrap()]
        );
        std::fs::write(
            &path,
            r#"{"profiles": {"bad": {"allow": [{"host": "a b", "ports": [1]}]}}}"#,
        )
        .unwrap();
        assert!(EgressConfig::load(&path).is_err());
    }

    #[test]
    fn only_named_destinations_of_the_runs_profiles_pass() {
        let c = EgressConfig::load(Path::new("/nonexistent")).unwrap();
        let npm = ["npm-registry".to_string()];
        assert_eq!(c.check(&npm, "registry.npmjs.org", 443), Ok("npm-registry"));
        assert_eq!(c.check(&npm, "REGISTRY.npmjs.org", 443), Ok("npm-registry"));
        assert!(c.check(&npm, "registry.npmjs.org", 80).is_err());
        assert!(c.check(&npm, "pypi.org", 443).is_err());
        assert!(c.check(&npm, "registry.npmjs.org.evil.com", 443).is_err());
        assert!(
            c.check(&npm, "104.16.0.1", 443)
                .unwrap_err()
                .contains("address")
        );
        assert!(c.check(&[], "registry.npmjs.org", 443).is_err());
        assert!(
            c.check(&["nope".into()], "registry.npmjs.org", 443)
                .is_err()
        );
    }

    #[test]
    fn wildcards_match_names_below_never_the_suffix_or_lookalikes() {
        assert!(host_matches("*.example.com", "a.example.com"));
        assert!(host_matches("*.example.com", "a.b.example.com"));
        assert!(!host_matches("*.example.com", "example.com"));
        assert!(!host_matches("*.example.com", "badexample.com"));
        assert!(!host_matches("*.example.com", ".example.com"));
        assert!(host_matches("example.com", "example.com"));
    }

    #[test]
    fn looked_up_names_may_only_land_on_public_addresses() {
        for bad in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "fc00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!is_public(bad.parse().unwrap()), "{bad}");
        }
        for good in ["1.1.1.1", "151.101.0.223", "2606:4700::1111"] {
            assert!(is_public(good.parse().unwrap()), "{good}");
        }
    }
}
