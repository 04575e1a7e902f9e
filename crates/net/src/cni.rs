//! The caller's side of the CNI protocol (spec 1.0): run a conflist's plugins for ADD, CHECK and
//! DEL the way libcni does (per-plugin config with `name`, `cniVersion`, `prevResult` and the
//! `runtimeConfig` of the capabilities it declares; DEL in reverse order), and read their typed
//! results and errors. Plugins are the executables of Debian's containernetworking-plugins.
//!
//! GC (spec 1.1) is not in the plugins this machine ships (1.1.1 speaks up to 1.0.0); strata's
//! `prune` does its work from its own attachment records (see `prune.rs`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// The CNI version strata writes into its conflists and asks plugins to answer in.
pub const CNI_VERSION: &str = "1.0.0";

/// Longest plugin output read (a result is a few hundred bytes).
const MAX_OUTPUT: usize = 1 << 20;

/// A CNI operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Attach the namespace.
    Add,
    /// Verify an attachment.
    Check,
    /// Undo an attachment (idempotent in every standard plugin).
    Del,
}

impl Op {
    fn env(self) -> &'static str {
        match self {
            Op::Add => "ADD",
            Op::Check => "CHECK",
            Op::Del => "DEL",
        }
    }
}

/// What a plugin is run for: the CNI_* environment.
#[derive(Debug, Clone)]
pub struct Invocation<'a> {
    /// CNI_CONTAINERID.
    pub container_id: &'a str,
    /// CNI_NETNS; `None` for a DEL whose namespace is gone (plugins then skip the namespace side).
    pub netns: Option<&'a Path>,
    /// CNI_IFNAME.
    pub ifname: &'a str,
    /// CNI_ARGS pairs (`IgnoreUnknown=1` is always added).
    pub args: &'a [(String, String)],
    /// Values for the `runtimeConfig` of plugins that declare the matching capability
    /// (e.g. `portMappings`).
    pub runtime_config: &'a Map<String, Value>,
}

/// An interface in a CNI result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Interface {
    /// Interface name.
    pub name: String,
    /// MAC address.
    #[serde(default)]
    pub mac: String,
    /// The namespace path for interfaces inside it; empty for host-side ones.
    #[serde(default)]
    pub sandbox: String,
}

/// An address in a CNI result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// Index into `interfaces`.
    #[serde(default)]
    pub interface: Option<usize>,
    /// CIDR address, e.g. 10.89.0.2/24.
    pub address: String,
    /// Gateway, when the network has one.
    #[serde(default)]
    pub gateway: Option<String>,
}

/// DNS settings in a CNI result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Dns {
    /// Name servers.
    #[serde(default)]
    pub nameservers: Vec<String>,
    /// Local domain.
    #[serde(default)]
    pub domain: Option<String>,
    /// Search domains.
    #[serde(default)]
    pub search: Vec<String>,
    /// resolv.conf options.
    #[serde(default)]
    pub options: Vec<String>,
}

/// A successful ADD's result (CNI 1.0 shape).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct AddResult {
    /// Version the plugin answered in.
    #[serde(rename = "cniVersion", default)]
    pub cni_version: String,
    /// Interfaces created.
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    /// Addresses assigned.
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    /// Routes (kept verbatim).
    #[serde(default)]
    pub routes: Vec<Value>,
    /// DNS settings.
    #[serde(default)]
    pub dns: Dns,
}

/// A plugin's error answer (`{"code", "msg", "details"}` on stdout, non-zero exit).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PluginError {
    /// CNI error code (1-99 well-known, 100+ plugin-specific).
    #[serde(default)]
    pub code: u32,
    /// Message.
    #[serde(default)]
    pub msg: String,
    /// Details.
    #[serde(default)]
    pub details: String,
}

/// Why running a plugin failed.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    /// The plugin executable is in none of the plugin directories.
    #[error("CNI plugin {plugin:?} not found in {dirs} (install Debian's containernetworking-plugins: scripts/deps.sh)")]
    NotFound {
        /// Plugin type.
        plugin: String,
        /// The directories searched, joined by ':'.
        dirs: String,
    },
    /// The plugin could not be run.
    #[error("running CNI plugin {path}: {source}")]
    Exec {
        /// Plugin path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The plugin answered with an error.
    #[error("CNI plugin {plugin} {op}: {msg}{details} (code {code})", details = if details.is_empty() { String::new() } else { format!(": {details}") })]
    Plugin {
        /// Plugin type.
        plugin: String,
        /// ADD, CHECK or DEL.
        op: &'static str,
        /// CNI error code.
        code: u32,
        /// Message.
        msg: String,
        /// Details (or the plugin's stderr when it wrote no JSON).
        details: String,
    },
    /// The plugin's output is not a result this module understands.
    #[error("CNI plugin {plugin} {op} answered something that is not a CNI result: {reason}")]
    BadResult {
        /// Plugin type.
        plugin: String,
        /// ADD or CHECK.
        op: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The conflist has no usable plugin list.
    #[error("network config {name:?} is not a usable conflist: {reason}")]
    BadConfig {
        /// Network name.
        name: String,
        /// What is wrong.
        reason: String,
    },
}

/// Where the plugin executables are (CNI_PATH).
#[derive(Debug, Clone)]
pub struct Plugins {
    dirs: Vec<PathBuf>,
}

impl Default for Plugins {
    /// Debian's /usr/lib/cni, then the upstream /opt/cni/bin.
    fn default() -> Self {
        Plugins {
            dirs: vec![PathBuf::from("/usr/lib/cni"), PathBuf::from("/opt/cni/bin")],
        }
    }
}

impl Plugins {
    /// Plugins looked up in `dirs`, in order.
    pub fn new(dirs: Vec<PathBuf>) -> Self {
        Plugins { dirs }
    }

    fn cni_path(&self) -> String {
        self.dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(":")
    }

    /// The executable of plugin `ty`.
    pub fn find(&self, ty: &str) -> Result<PathBuf, CniError> {
        let valid = !ty.is_empty()
            && ty
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if valid {
            for d in &self.dirs {
                let p = d.join(ty);
                if p.is_file() {
                    return Ok(p);
                }
            }
        }
        Err(CniError::NotFound {
            plugin: ty.to_string(),
            dirs: self.cni_path(),
        })
    }

    /// Runs one plugin with `conf` on stdin; returns its stdout JSON (ADD, CHECK's empty answer
    /// gives `Value::Null`).
    fn exec(
        &self,
        op: Op,
        ty: &str,
        conf: &Value,
        inv: &Invocation<'_>,
    ) -> Result<Value, CniError> {
        let path = self.find(ty)?;
        let mut args = String::from("IgnoreUnknown=1");
        for (k, v) in inv.args {
            args.push(';');
            args.push_str(k);
            args.push('=');
            args.push_str(v);
        }
        let mut cmd = Command::new(&path);
        cmd.env("CNI_COMMAND", op.env())
            .env("CNI_CONTAINERID", inv.container_id)
            .env(
                "CNI_NETNS",
                inv.netns.map(|p| p.as_os_str()).unwrap_or_default(),
            )
            .env("CNI_IFNAME", inv.ifname)
            .env("CNI_ARGS", args)
            .env("CNI_PATH", self.cni_path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if std::env::var_os("PATH").is_none() {
            // Plugins run iptables and ip by name.
            cmd.env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        }
        let mut child = cmd.spawn().map_err(|source| CniError::Exec {
            path: path.clone(),
            source,
        })?;
        let input = serde_json::to_vec(conf).expect("JSON values serialize");
        let mut stdin = child.stdin.take().expect("stdin is piped");
        // A plugin that exits without reading its config gives EPIPE here; its exit status says why.
        let _ = stdin.write_all(&input);
        drop(stdin);
        let out = child.wait_with_output().map_err(|source| CniError::Exec {
            path: path.clone(),
            source,
        })?;
        let stdout = &out.stdout[..out.stdout.len().min(MAX_OUTPUT)];
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr[..out.stderr.len().min(4096)])
                .trim()
                .to_string();
            let e: PluginError = serde_json::from_slice(stdout).unwrap_or(PluginError {
                code: 0,
                msg: format!("exited with {}", out.status),
                details: String::new(),
            });
            let details = if e.details.is_empty() {
                stderr
            } else {
                e.details
            };
            return Err(CniError::Plugin {
                plugin: ty.to_string(),
                op: op.env(),
                code: e.code,
                msg: e.msg,
                details,
            });
        }
        if stdout.iter().all(|b| b.is_ascii_whitespace()) {
            return Ok(Value::Null);
        }
        serde_json::from_slice(stdout).map_err(|e| CniError::BadResult {
            plugin: ty.to_string(),
            op: op.env(),
            reason: e.to_string(),
        })
    }
}

/// A conflist's plugin entries and the fields every entry inherits.
fn plugin_list(conflist: &Value) -> Result<(&str, &str, &Vec<Value>), CniError> {
    let name = conflist
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let bad = |reason: &str| CniError::BadConfig {
        name: name.to_string(),
        reason: reason.to_string(),
    };
    if name.is_empty() {
        return Err(bad("it has no \"name\""));
    }
    let version = conflist
        .get("cniVersion")
        .and_then(Value::as_str)
        .unwrap_or(CNI_VERSION);
    let plugins = conflist
        .get("plugins")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("it has no \"plugins\" list"))?;
    if plugins.is_empty() {
        return Err(bad("its \"plugins\" list is empty"));
    }
    for p in plugins {
        if p.get("type").and_then(Value::as_str).is_none() {
            return Err(bad("a plugin entry has no \"type\""));
        }
    }
    Ok((name, version, plugins))
}

/// One plugin's stdin: its entry plus `name`, `cniVersion`, `prevResult` and the `runtimeConfig`
/// of the capabilities it declares (libcni's injection rule).
fn plugin_conf(
    entry: &Value,
    name: &str,
    version: &str,
    prev: Option<&Value>,
    rc: &Map<String, Value>,
) -> Value {
    let mut conf = entry.as_object().cloned().unwrap_or_default();
    conf.insert("name".into(), json!(name));
    conf.insert("cniVersion".into(), json!(version));
    if let Some(prev) = prev {
        conf.insert("prevResult".into(), prev.clone());
    }
    if let Some(caps) = entry.get("capabilities").and_then(Value::as_object) {
        let mut runtime = Map::new();
        for (cap, on) in caps {
            if on.as_bool() == Some(true) {
                if let Some(v) = rc.get(cap) {
                    runtime.insert(cap.clone(), v.clone());
                }
            }
        }
        if !runtime.is_empty() {
            conf.insert("runtimeConfig".into(), Value::Object(runtime));
        }
    }
    Value::Object(conf)
}

/// True for a portmap entry when the caller says there is no port to map (an empty
/// `portMappings`, not an absent one): its ADD would return prevResult unchanged and its DEL find
/// nothing, so the process (30-45 ms here, bench/net-dataplane.sh) is skipped on both sides. An
/// absent `portMappings` (prune's DEL of an attachment it knows nothing about) runs it.
fn nothing_to_map(entry: &Value, rc: &Map<String, Value>) -> bool {
    entry.get("type").and_then(Value::as_str) == Some("portmap")
        && rc
            .get("portMappings")
            .and_then(Value::as_array)
            .is_some_and(|m| m.is_empty())
}

fn plugin_type(entry: &Value) -> &str {
    entry
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// Runs ADD through the whole list, each plugin getting the previous one's result; returns the
/// last result (raw, for a later CHECK/DEL) and its typed form. When a plugin fails, the plugins
/// already run are DELeted (reverse order) before the ADD error is returned, so a failed ADD
/// leaves nothing behind.
pub fn add(
    plugins: &Plugins,
    conflist: &Value,
    inv: &Invocation<'_>,
) -> Result<(Value, AddResult), CniError> {
    let (name, version, list) = plugin_list(conflist)?;
    let mut prev: Option<Value> = None;
    for (i, entry) in list.iter().enumerate() {
        if nothing_to_map(entry, inv.runtime_config) {
            continue;
        }
        let conf = plugin_conf(entry, name, version, prev.as_ref(), inv.runtime_config);
        match plugins.exec(Op::Add, plugin_type(entry), &conf, inv) {
            Ok(Value::Null) => {
                let e = CniError::BadResult {
                    plugin: plugin_type(entry).into(),
                    op: "ADD",
                    reason: "no result".into(),
                };
                let _ = del_entries(plugins, name, version, &list[..=i], prev.as_ref(), inv);
                return Err(e);
            }
            Ok(v) => prev = Some(v),
            Err(e) => {
                // The failing plugin may have done part of its work: DEL it too.
                let _ = del_entries(plugins, name, version, &list[..=i], prev.as_ref(), inv);
                return Err(e);
            }
        }
    }
    let raw = prev.ok_or_else(|| CniError::BadConfig {
        name: name.to_string(),
        reason: "no plugin in it made an interface (only portmap?)".into(),
    })?;
    let typed: AddResult =
        serde_json::from_value(raw.clone()).map_err(|e| CniError::BadResult {
            plugin: plugin_type(list.last().expect("non-empty")).into(),
            op: "ADD",
            reason: e.to_string(),
        })?;
    Ok((raw, typed))
}

/// Runs CHECK through the list with the cached ADD result.
pub fn check(
    plugins: &Plugins,
    conflist: &Value,
    prev: &Value,
    inv: &Invocation<'_>,
) -> Result<(), CniError> {
    let (name, version, list) = plugin_list(conflist)?;
    if conflist.get("disableCheck").and_then(Value::as_bool) == Some(true) {
        return Ok(());
    }
    for entry in list {
        if nothing_to_map(entry, inv.runtime_config) {
            continue;
        }
        let conf = plugin_conf(entry, name, version, Some(prev), inv.runtime_config);
        plugins.exec(Op::Check, plugin_type(entry), &conf, inv)?;
    }
    Ok(())
}

/// Runs DEL through the list in reverse order with the cached ADD result (or a synthesized one).
/// Every plugin is run even when one fails; the first error is returned.
pub fn del(
    plugins: &Plugins,
    conflist: &Value,
    prev: Option<&Value>,
    inv: &Invocation<'_>,
) -> Result<(), CniError> {
    let (name, version, list) = plugin_list(conflist)?;
    del_entries(plugins, name, version, list, prev, inv)
}

fn del_entries(
    plugins: &Plugins,
    name: &str,
    version: &str,
    list: &[Value],
    prev: Option<&Value>,
    inv: &Invocation<'_>,
) -> Result<(), CniError> {
    let mut first = None;
    for entry in list.iter().rev() {
        if nothing_to_map(entry, inv.runtime_config) {
            continue;
        }
        let conf = plugin_conf(entry, name, version, prev, inv.runtime_config);
        if let Err(e) = plugins.exec(Op::Del, plugin_type(entry), &conf, inv) {
            first.get_or_insert(e);
        }
    }
    first.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_config_goes_only_to_plugins_with_the_capability() {
        let mut rc = Map::new();
        rc.insert(
            "portMappings".into(),
            json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]),
        );
        let with = json!({"type": "portmap", "capabilities": {"portMappings": true}});
        let off = json!({"type": "portmap", "capabilities": {"portMappings": false}});
        let without = json!({"type": "bridge"});
        let c = plugin_conf(&with, "n", "1.0.0", None, &rc);
        assert_eq!(c["runtimeConfig"]["portMappings"][0]["hostPort"], 8080);
        assert_eq!(c["name"], "n");
        assert!(plugin_conf(&off, "n", "1.0.0", None, &rc)
            .get("runtimeConfig")
            .is_none());
        let prev = json!({"ips": []});
        let c = plugin_conf(&without, "n", "1.0.0", Some(&prev), &rc);
        assert!(c.get("runtimeConfig").is_none());
        assert_eq!(c["prevResult"], prev);
    }

    #[test]
    fn portmap_is_skipped_only_when_there_is_nothing_to_map() {
        let pm = json!({"type": "portmap", "capabilities": {"portMappings": true}});
        let mut rc = Map::new();
        assert!(!nothing_to_map(&pm, &rc), "unknown mappings: run it");
        rc.insert("portMappings".into(), json!([]));
        assert!(nothing_to_map(&pm, &rc));
        assert!(!nothing_to_map(&json!({"type": "firewall"}), &rc));
        rc.insert(
            "portMappings".into(),
            json!([{"hostPort": 1, "containerPort": 1, "protocol": "tcp"}]),
        );
        assert!(!nothing_to_map(&pm, &rc));
    }

    #[test]
    fn bad_conflists_are_refused() {
        for bad in [
            json!({}),
            json!({"name": "x"}),
            json!({"name": "x", "plugins": []}),
            json!({"name": "x", "plugins": [{}]}),
        ] {
            assert!(
                matches!(plugin_list(&bad), Err(CniError::BadConfig { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn plugin_names_cannot_escape_the_plugin_dirs() {
        let p = Plugins::default();
        for ty in ["../../bin/sh", "/bin/sh", "", "a/b"] {
            assert!(matches!(p.find(ty), Err(CniError::NotFound { .. })), "{ty}");
        }
    }

    #[test]
    fn results_parse() {
        let r: AddResult = serde_json::from_str(
            r#"{"cniVersion":"1.0.0","interfaces":[{"name":"br0","mac":"aa"},{"name":"eth0","mac":"bb","sandbox":"/run/netns/x"}],
            "ips":[{"interface":1,"address":"10.1.0.2/24","gateway":"10.1.0.1"}],"routes":[{"dst":"0.0.0.0/0"}],"dns":{}}"#,
        )
        .unwrap();
        assert_eq!(r.ips[0].address, "10.1.0.2/24");
        assert_eq!(r.interfaces[1].sandbox, "/run/netns/x");
    }
}
