//! `lull-agent install` and `lull-agent uninstall`: put the agent on a machine as a service.
//!
//! `install` writes, under a root directory (`/` by default; another one for packaging and
//! tests):
//!
//! - `etc/lull/agent.toml`: the coordinator's address and pinned key, the data directory and the
//!   trust list's path; written only when missing (the owner's edits are kept);
//! - `etc/lull/allowed_signers`: an empty trust list with instructions, when missing: the agent
//!   refuses every workload until the owner lists the keys they trust;
//! - the service definition, always rewritten: a systemd unit
//!   (`etc/systemd/system/lull-agent.service`) on Linux, a launchd daemon
//!   (`Library/LaunchDaemons/org.lull.agent.plist`) on macOS;
//!
//! and, for launchd, the data directory (systemd makes it, owned by the service's user); then,
//! when the root is `/` and the service manager runs, enables and starts the service.
//!
//! On Windows the files are `C:\ProgramData\Lull\agent.toml` and `allowed_signers`, the data
//! directory `C:\ProgramData\Lull\agent`, and the service (`LullAgent`, started at boot,
//! restarted on failure) is registered with the service control manager by `sc.exe`, to run
//! `lull-agent service` as the LocalService account: no administrator rights. `icacls` gives
//! that account the data directory and takes it away from other users (the agent's key is
//! there), and leaves the configuration and trust list to administrators.
//! With a join token ([`enroll`]), the agent's key is made and enrolled with the coordinator
//! first. Every step is printed; `--dry-run` prints without writing or running anything. Running it
//! again changes nothing that is already right. `uninstall` stops and disables the service and
//! removes the service definition; `--purge` also removes the configuration and the data
//! directory.
//!
//! The systemd unit runs the agent as a dynamic user (no root), in the `input` group (to see
//! the owner at the keyboard), with `CAP_SYS_NICE` only (to raise a pausing guest until it
//! parks), and a state directory for its data.

use std::fmt::Write as _;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use lull_protocol::Digest;

/// Where the configuration lives on the target system.
pub const CONFIG_PATH: &str = "/etc/lull/agent.toml";
/// Where the owner's trust list lives on the target system.
pub const SIGNERS_PATH: &str = "/etc/lull/allowed_signers";
/// The agent's data directory on the target system.
pub const DATA_PATH: &str = "/var/lib/lull/agent";
/// The systemd unit.
pub const UNIT_PATH: &str = "/etc/systemd/system/lull-agent.service";
/// The launchd daemon.
pub const PLIST_PATH: &str = "/Library/LaunchDaemons/org.lull.agent.plist";
/// Where the configuration, trust list and data directory live on Windows.
pub const WINDOWS_DIR: &str = "C:/ProgramData/Lull";
/// The Windows service's name.
pub const WINDOWS_SERVICE: &str = "LullAgent";

/// Where a service manager's system keeps the agent's files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// The configuration file.
    pub config: &'static str,
    /// The trust list.
    pub signers: &'static str,
    /// The data directory.
    pub data: &'static str,
}

/// What `install` needs.
#[derive(Debug, Clone)]
pub struct InstallOptions {
    /// The coordinator's QUIC address, `host:port`.
    pub coordinator: String,
    /// The coordinator's public key hash, `sha256:<64 hex>`, to pin.
    pub ca_hash: String,
    /// Where the target system's `/` is.
    pub root: PathBuf,
    /// The `lull-agent` binary the service runs.
    pub binary: PathBuf,
    /// A name for people, written to the configuration when given.
    pub name: Option<String>,
    /// Print what would be done, do nothing.
    pub dry_run: bool,
}

/// Which service manager the definition is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceManager {
    /// Linux.
    Systemd,
    /// macOS.
    Launchd,
    /// Windows' service control manager.
    Windows,
}

impl ServiceManager {
    /// The one of this operating system.
    pub fn native() -> ServiceManager {
        if cfg!(target_vendor = "apple") {
            ServiceManager::Launchd
        } else if cfg!(windows) {
            ServiceManager::Windows
        } else {
            ServiceManager::Systemd
        }
    }

    /// Where the files go on this manager's system.
    pub fn layout(self) -> Layout {
        match self {
            ServiceManager::Systemd | ServiceManager::Launchd => Layout {
                config: CONFIG_PATH,
                signers: SIGNERS_PATH,
                data: DATA_PATH,
            },
            ServiceManager::Windows => Layout {
                config: "C:/ProgramData/Lull/agent.toml",
                signers: "C:/ProgramData/Lull/allowed_signers",
                data: "C:/ProgramData/Lull/agent",
            },
        }
    }

    /// The service definition file, where the manager reads one.
    fn definition(self) -> Option<&'static str> {
        match self {
            ServiceManager::Systemd => Some(UNIT_PATH),
            ServiceManager::Launchd => Some(PLIST_PATH),
            ServiceManager::Windows => None,
        }
    }
}

/// One command `install` or `uninstall` runs.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Step {
    args: Vec<String>,
    /// A failure is expected at times and harmless (stopping a service that is not running).
    may_fail: bool,
    /// When the command fails, this one runs instead, and must succeed (a service made before
    /// is updated rather than made).
    otherwise: Option<Vec<String>>,
}

impl Step {
    fn new<S: Into<String>>(args: impl IntoIterator<Item = S>) -> Self {
        Self {
            args: args.into_iter().map(Into::into).collect(),
            may_fail: false,
            otherwise: None,
        }
    }

    fn otherwise(self, instead: Step) -> Self {
        Self {
            otherwise: Some(instead.args),
            ..self
        }
    }

    fn may_fail(self) -> Self {
        Self {
            may_fail: true,
            ..self
        }
    }

    /// The command as one would type it: arguments with spaces or quotes quoted.
    fn line(&self) -> String {
        let mut line = Self::shown(&self.args);
        if let Some(instead) = &self.otherwise {
            line = format!("{line} (if that fails: {})", Self::shown(instead));
        }
        line
    }

    fn shown(args: &[String]) -> String {
        args.iter()
            .map(|a| {
                if a.is_empty() || a.contains([' ', '"']) {
                    format!("\"{}\"", a.replace('"', "\\\""))
                } else {
                    a.clone()
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// One file `install` writes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Planned {
    /// The path on the target system (absolute).
    path: &'static str,
    contents: String,
    mode: u32,
    /// Keep an existing file, whatever it holds.
    keep_existing: bool,
}

/// Checks the options: the address has a port, the hash is a sha256 digest, the binary is an
/// absolute path.
fn validate(opts: &InstallOptions) -> anyhow::Result<()> {
    let Some((host, port)) = opts.coordinator.rsplit_once(':') else {
        bail!(
            "--coordinator {:?}: expected HOST:PORT, e.g. lull.example.org:7443",
            opts.coordinator
        );
    };
    if host.is_empty() || port.parse::<u16>().is_err() {
        bail!(
            "--coordinator {:?}: expected HOST:PORT with a port number, e.g. lull.example.org:7443",
            opts.coordinator
        );
    }
    opts.ca_hash.parse::<Digest>().map_err(|e| {
        anyhow::anyhow!(
            "--ca-hash {:?}: {e} (expected sha256:<64 hex digits>, as `lull-coordinator serve` prints)",
            opts.ca_hash
        )
    })?;
    // A Windows path (`C:\...`) counts as absolute wherever the service is planned.
    let drive_path = |p: &Path| {
        let b = p.as_os_str().as_encoded_bytes();
        b.len() > 2 && b[0].is_ascii_alphabetic() && b[1] == b':' && matches!(b[2], b'/' | b'\\')
    };
    if !opts.binary.is_absolute() && !drive_path(&opts.binary) {
        bail!(
            "--binary {}: must be an absolute path",
            opts.binary.display()
        );
    }
    Ok(())
}

/// A TOML string.
fn quoted(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

fn config_text(opts: &InstallOptions, layout: Layout) -> String {
    let mut text = String::from(
        "# Written by `lull-agent install`; edit freely: install does not overwrite it.\n\
         # Every setting is described in the operators' guide (docs/operators.md).\n",
    );
    let _ = writeln!(text, "coordinator = {}", quoted(&opts.coordinator));
    let _ = writeln!(text, "coordinator_key = {}", quoted(&opts.ca_hash));
    let _ = writeln!(text, "data_dir = {}", quoted(layout.data));
    let _ = writeln!(text, "allowed_signers = {}", quoted(layout.signers));
    if let Some(name) = &opts.name {
        let _ = writeln!(text, "name = {}", quoted(name));
    }
    text
}

const SIGNERS_TEXT: &str = "\
# The keys whose workloads this machine runs: one OpenSSH public key per line, with a name in
# front, e.g.
#   alice@example.org ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA...
# Until a key is listed here, the agent refuses every workload. Restart the agent after
# changing this file (systemctl restart lull-agent; on macOS launchctl kickstart -k
# system/org.lull.agent; on Windows Restart-Service LullAgent).
";

/// The systemd unit for `binary` reading `config`.
///
/// `input_group`: the system has an `input` group (udev makes it), which the service joins to
/// see keyboards and mice; systemd refuses to start a unit whose group does not exist.
pub fn systemd_unit(binary: &Path, input_group: bool) -> String {
    let input = if input_group {
        "# To see the owner at the keyboard (the agent reads only that input happened).\n\
         SupplementaryGroups=input\n"
    } else {
        "# No input group on this system (no udev): the agent cannot see keyboard and mouse\n\
         # input; systemd-logind's idle hints stand in on desktops.\n"
    };
    format!(
        "\
# Written by `lull-agent install`.
[Unit]
Description=Lull agent: lends this machine's idle CPU to a Lull coordinator
After=network-online.target
Wants=network-online.target

[Service]
ExecStart={binary} run --config {CONFIG_PATH}
Restart=on-failure
RestartSec=5
# No root: a user made for the service, its data in /var/lib/lull/agent.
DynamicUser=yes
StateDirectory=lull/agent
StateDirectoryMode=0700
{input}# To raise a pausing guest until it stops; nothing else.
AmbientCapabilities=CAP_SYS_NICE
CapabilityBoundingSet=CAP_SYS_NICE
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes

[Install]
WantedBy=multi-user.target
",
        binary = binary.display()
    )
}

/// The launchd daemon for `binary` reading the configuration.
pub fn launchd_plist(binary: &Path) -> String {
    format!(
        "\
<?xml version=\"1.0\" encoding=\"UTF-8\"?>
<!DOCTYPE plist PUBLIC \"-//Apple//DTD PLIST 1.0//EN\" \"http://www.apple.com/DTDs/PropertyList-1.0.dtd\">
<!-- Written by `lull-agent install`. -->
<plist version=\"1.0\">
<dict>
  <key>Label</key>
  <string>org.lull.agent</string>
  <key>ProgramArguments</key>
  <array>
    <string>{binary}</string>
    <string>run</string>
    <string>--config</string>
    <string>{CONFIG_PATH}</string>
  </array>
  <key>RunAtLoad</key>
  <true/>
  <key>KeepAlive</key>
  <true/>
  <key>ProcessType</key>
  <string>Background</string>
</dict>
</plist>
",
        binary = binary.display()
    )
}

fn plan(opts: &InstallOptions, manager: ServiceManager) -> Vec<Planned> {
    let layout = manager.layout();
    let mut planned = vec![
        Planned {
            path: layout.config,
            contents: config_text(opts, layout),
            mode: 0o644,
            keep_existing: true,
        },
        Planned {
            path: layout.signers,
            contents: SIGNERS_TEXT.to_owned(),
            mode: 0o644,
            keep_existing: true,
        },
    ];
    let definition = match manager {
        ServiceManager::Systemd => Some(systemd_unit(&opts.binary, has_group(&opts.root, "input"))),
        ServiceManager::Launchd => Some(launchd_plist(&opts.binary)),
        ServiceManager::Windows => None,
    };
    if let (Some(path), Some(contents)) = (manager.definition(), definition) {
        planned.push(Planned {
            path,
            contents,
            mode: 0o644,
            keep_existing: false,
        });
    }
    planned
}

/// Whether the target system under `root` has group `name` (in its `/etc/group`).
fn has_group(root: &Path, name: &str) -> bool {
    std::fs::read_to_string(under(root, "/etc/group"))
        .is_ok_and(|groups| groups.lines().any(|l| l.split(':').next() == Some(name)))
}

/// `path` (absolute on the target system, `/etc/...` or `C:/...`) under `root`; the path
/// itself when the root is this system's.
fn under(root: &Path, path: &str) -> PathBuf {
    if root == Path::new("/") {
        return PathBuf::from(path);
    }
    let relative = path.strip_prefix("C:").unwrap_or(path);
    root.join(relative.trim_start_matches('/'))
}

/// Whether the service manager can be driven: the root is this system's, and it runs.
fn manager_running(root: &Path, manager: ServiceManager) -> bool {
    root == Path::new("/")
        && match manager {
            ServiceManager::Systemd => Path::new("/run/systemd/system").is_dir(),
            ServiceManager::Launchd => cfg!(target_vendor = "apple"),
            ServiceManager::Windows => cfg!(windows),
        }
}

/// Well-known Windows accounts, by SID (their names depend on the system's language).
const LOCAL_SERVICE_SID: &str = "*S-1-5-19";
const SYSTEM_SID: &str = "*S-1-5-18";
const ADMINISTRATORS_SID: &str = "*S-1-5-32-544";
const USERS_SID: &str = "*S-1-5-32-545";

/// The commands that register (or update) and start the installed service.
fn start_commands(manager: ServiceManager, binary: &Path) -> Vec<Step> {
    match manager {
        ServiceManager::Systemd => vec![
            Step::new(["systemctl", "daemon-reload"]),
            Step::new(["systemctl", "enable", "--now", "lull-agent.service"]),
        ],
        ServiceManager::Launchd => vec![Step::new(["launchctl", "load", "-w", PLIST_PATH])],
        ServiceManager::Windows => {
            let layout = manager.layout();
            let command = format!(
                "\"{}\" service --config \"{}\"",
                binary.display(),
                layout.config
            );
            let settings = [
                "binPath=",
                command.as_str(),
                "start=",
                "auto",
                "obj=",
                "NT AUTHORITY\\LocalService",
                "DisplayName=",
                "Lull agent",
            ];
            let sc = |verb: &str| {
                Step::new(
                    ["sc.exe", verb, WINDOWS_SERVICE]
                        .into_iter()
                        .chain(settings),
                )
            };
            let grant = |sid: &str, rights: &str| format!("{sid}:(OI)(CI){rights}");
            vec![
                // A service installed before is stopped, and updated instead of made.
                Step::new(["sc.exe", "stop", WINDOWS_SERVICE]).may_fail(),
                sc("create").otherwise(sc("config")),
                Step::new([
                    "sc.exe",
                    "description",
                    WINDOWS_SERVICE,
                    "Lends this machine's idle CPU to a Lull coordinator",
                ]),
                Step::new([
                    "sc.exe",
                    "failure",
                    WINDOWS_SERVICE,
                    "reset=",
                    "86400",
                    "actions=",
                    "restart/5000",
                ]),
                // The configuration and trust list: administrators change them; the service
                // and users read them.
                Step::new([
                    "icacls".to_owned(),
                    WINDOWS_DIR.to_owned(),
                    "/inheritance:r".to_owned(),
                    "/grant:r".to_owned(),
                    grant(ADMINISTRATORS_SID, "F"),
                    grant(SYSTEM_SID, "F"),
                    grant(LOCAL_SERVICE_SID, "RX"),
                    grant(USERS_SID, "RX"),
                ]),
                // The data directory (the agent's key among it): the service's alone.
                Step::new([
                    "icacls".to_owned(),
                    layout.data.to_owned(),
                    "/inheritance:r".to_owned(),
                    "/grant:r".to_owned(),
                    grant(ADMINISTRATORS_SID, "F"),
                    grant(SYSTEM_SID, "F"),
                    grant(LOCAL_SERVICE_SID, "M"),
                ]),
                Step::new(["sc.exe", "start", WINDOWS_SERVICE]),
            ]
        }
    }
}

fn stop_commands(manager: ServiceManager) -> Vec<Step> {
    match manager {
        ServiceManager::Systemd => {
            vec![Step::new([
                "systemctl",
                "disable",
                "--now",
                "lull-agent.service",
            ])]
        }
        ServiceManager::Launchd => vec![Step::new(["launchctl", "unload", "-w", PLIST_PATH])],
        ServiceManager::Windows => vec![
            Step::new(["sc.exe", "stop", WINDOWS_SERVICE]).may_fail(),
            Step::new(["sc.exe", "delete", WINDOWS_SERVICE]),
        ],
    }
}

/// Runs (or, when `dry_run` or the manager does not run, prints) `steps`, which are for
/// `purpose` ("start", "stop").
fn drive(
    steps: &[Step],
    purpose: &str,
    run: bool,
    dry_run: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    for step in steps {
        let line = step.line();
        if dry_run {
            writeln!(out, "would run: {line}")?;
        } else if run {
            let run = |args: &[String]| {
                Command::new(&args[0])
                    .args(&args[1..])
                    .status()
                    .with_context(|| format!("running {}", Step::shown(args)))
            };
            let status = run(&step.args)?;
            if status.success() {
                writeln!(out, "ran: {}", Step::shown(&step.args))?;
            } else if let Some(instead) = &step.otherwise {
                let shown = Step::shown(instead);
                let again = run(instead)?;
                if !again.success() {
                    bail!(
                        "{shown} failed ({again}), after {} failed ({status})",
                        Step::shown(&step.args)
                    );
                }
                writeln!(out, "ran: {shown}")?;
            } else if step.may_fail {
                writeln!(out, "ran: {line} ({status}: nothing to do)")?;
            } else {
                bail!("{line} failed ({status})");
            }
        } else {
            writeln!(out, "to {purpose} it on the target system, run: {line}")?;
        }
    }
    Ok(())
}

/// Enrolls the agent being installed with its coordinator: makes its ID and key in the data
/// directory under the root, and registers the key with a join token over a connection that
/// pins the coordinator's key. Done before [`install`] writes anything, so that a refused token
/// leaves the machine as it was. The token is not kept.
pub async fn enroll(
    opts: &InstallOptions,
    token: &str,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    validate(opts)?;
    let data = under(&opts.root, ServiceManager::native().layout().data);
    if opts.dry_run {
        writeln!(
            out,
            "would enroll with the coordinator at {}: a key made in {}, registered with the join token",
            opts.coordinator,
            data.display()
        )?;
        return Ok(());
    }
    let pin: Digest = opts.ca_hash.parse()?;
    let name = opts
        .name
        .clone()
        .unwrap_or_else(|| sysinfo::System::host_name().unwrap_or_else(|| "agent".into()));
    let done = crate::enroll::enroll(&opts.coordinator, pin, &data, &name, token).await?;
    writeln!(
        out,
        "{}: agent {} (key {}) with the coordinator at {}",
        if done.already {
            "enrolled already"
        } else {
            "enrolled"
        },
        done.agent_id,
        done.key,
        opts.coordinator
    )?;
    Ok(())
}

/// Installs (see the module docs), printing each step to `out`.
pub fn install(
    opts: &InstallOptions,
    manager: ServiceManager,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    validate(opts)?;
    let verb = if opts.dry_run { "would write" } else { "wrote" };
    for file in plan(opts, manager) {
        let target = under(&opts.root, file.path);
        match std::fs::read_to_string(&target) {
            Ok(existing) if existing == file.contents => {
                writeln!(out, "unchanged: {}", target.display())?;
                continue;
            }
            Ok(_) if file.keep_existing => {
                writeln!(out, "kept (it exists): {}", target.display())?;
                continue;
            }
            _ => {}
        }
        if !opts.dry_run {
            write_file(&target, &file.contents, file.mode)?;
        }
        writeln!(out, "{verb}: {}", target.display())?;
    }
    if manager == ServiceManager::Systemd && !has_group(&opts.root, "input") {
        writeln!(
            out,
            "note: {} has no input group (udev makes it): the agent will not see keyboard and \
             mouse input, and judges idleness by CPU (and logind's idle hints on desktops)",
            under(&opts.root, "/etc/group").display()
        )?;
    }
    // systemd makes the data directory itself (StateDirectory=), owned by the service's user.
    let layout = manager.layout();
    let data = under(&opts.root, layout.data);
    if manager != ServiceManager::Systemd && !data.exists() {
        if !opts.dry_run {
            std::fs::create_dir_all(&data)
                .with_context(|| format!("creating {}", data.display()))?;
        }
        writeln!(
            out,
            "{}: {}",
            if opts.dry_run {
                "would create"
            } else {
                "created"
            },
            data.display()
        )?;
    }
    drive(
        &start_commands(manager, &opts.binary),
        "start",
        manager_running(&opts.root, manager),
        opts.dry_run,
        out,
    )?;
    writeln!(
        out,
        "next: list the keys you trust in {} (the agent refuses every workload until then)",
        under(&opts.root, layout.signers).display()
    )?;
    Ok(())
}

/// Reverses [`install`]: stops and disables the service, removes its definition, and with
/// `purge` the configuration, the trust list and the data directory too.
pub fn uninstall(
    root: &Path,
    purge: bool,
    dry_run: bool,
    manager: ServiceManager,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    // Windows keeps no definition file: its service is asked to go in any case.
    let installed = manager
        .definition()
        .is_none_or(|service| under(root, service).exists());
    if installed {
        drive(
            &stop_commands(manager),
            "stop",
            manager_running(root, manager),
            dry_run,
            out,
        )?;
    }
    let layout = manager.layout();
    let mut paths: Vec<&str> = manager.definition().into_iter().collect();
    if purge {
        paths.extend([layout.config, layout.signers, layout.data]);
    }
    for path in paths {
        let target = under(root, path);
        if !target.exists() {
            writeln!(out, "not there: {}", target.display())?;
            continue;
        }
        if !dry_run {
            if target.is_dir() {
                std::fs::remove_dir_all(&target)
            } else {
                std::fs::remove_file(&target)
            }
            .with_context(|| format!("removing {}", target.display()))?;
        }
        writeln!(
            out,
            "{}: {}",
            if dry_run { "would remove" } else { "removed" },
            target.display()
        )?;
    }
    if !purge {
        writeln!(
            out,
            "kept the configuration and data ({}, {}); --purge removes them",
            under(root, layout.config).display(),
            under(root, layout.data).display()
        )?;
    }
    Ok(())
}

fn write_file(path: &Path, contents: &str, mode: u32) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("setting the mode of {}", path.display()))?;
    }
    #[cfg(not(unix))]
    let _ = mode;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(root: &Path) -> InstallOptions {
        InstallOptions {
            coordinator: "lull.example.org:7443".into(),
            ca_hash: format!("sha256:{}", "ab".repeat(32)),
            root: root.to_owned(),
            binary: PathBuf::from("/usr/local/bin/lull-agent"),
            name: Some("lab-3".into()),
            dry_run: false,
        }
    }

    fn run_install(opts: &InstallOptions, manager: ServiceManager) -> String {
        let mut out = Vec::new();
        install(opts, manager, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn dry_run_writes_nothing_and_says_everything() {
        let root = tempfile::tempdir().unwrap();
        let opts = InstallOptions {
            dry_run: true,
            ..options(root.path())
        };
        let said = run_install(&opts, ServiceManager::Systemd);
        for path in [CONFIG_PATH, SIGNERS_PATH, UNIT_PATH] {
            assert!(
                said.contains(&format!(
                    "would write: {}",
                    under(root.path(), path).display()
                )),
                "{said}"
            );
        }
        assert!(
            said.contains("would run: systemctl enable --now lull-agent.service"),
            "{said}"
        );
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0, "{said}");
    }

    #[test]
    fn install_twice_is_safe_and_uninstall_reverses_it() {
        let root = tempfile::tempdir().unwrap();
        let opts = options(root.path());
        let first = run_install(&opts, ServiceManager::Systemd);
        assert!(first.contains("wrote:"), "{first}");
        assert!(
            first.contains("to start it on the target system, run: systemctl daemon-reload"),
            "{first}"
        );
        let config = std::fs::read_to_string(under(root.path(), CONFIG_PATH)).unwrap();
        let parsed: crate::AgentConfig = toml::from_str(&config).unwrap();
        assert_eq!(parsed.coordinator, "lull.example.org:7443");
        assert_eq!(
            parsed.coordinator_key.as_deref(),
            Some(opts.ca_hash.as_str())
        );
        assert_eq!(parsed.data_dir, PathBuf::from(DATA_PATH));
        assert_eq!(parsed.name.as_deref(), Some("lab-3"));
        let unit = std::fs::read_to_string(under(root.path(), UNIT_PATH)).unwrap();
        assert!(
            unit.contains("ExecStart=/usr/local/bin/lull-agent run --config /etc/lull/agent.toml"),
            "{unit}"
        );
        assert!(!under(root.path(), DATA_PATH).exists(), "systemd makes it");

        // Again: nothing changes; the owner's edits are kept.
        std::fs::write(under(root.path(), SIGNERS_PATH), "alice ssh-ed25519 AAAA\n").unwrap();
        let second = run_install(&opts, ServiceManager::Systemd);
        assert!(!second.contains("wrote:"), "{second}");
        assert!(
            second.contains(&format!(
                "kept (it exists): {}",
                under(root.path(), SIGNERS_PATH).display()
            )),
            "{second}"
        );
        assert!(
            second.contains(&format!(
                "unchanged: {}",
                under(root.path(), UNIT_PATH).display()
            )),
            "{second}"
        );

        let mut out = Vec::new();
        uninstall(root.path(), false, false, ServiceManager::Systemd, &mut out).unwrap();
        let said = String::from_utf8(out).unwrap();
        assert!(!under(root.path(), UNIT_PATH).exists(), "{said}");
        assert!(
            under(root.path(), CONFIG_PATH).exists(),
            "kept without --purge: {said}"
        );
        let mut out = Vec::new();
        uninstall(root.path(), true, false, ServiceManager::Systemd, &mut out).unwrap();
        for path in [CONFIG_PATH, SIGNERS_PATH, DATA_PATH, UNIT_PATH] {
            assert!(!under(root.path(), path).exists(), "{path}");
        }
    }

    #[test]
    fn the_input_group_is_joined_only_where_it_exists() {
        let root = tempfile::tempdir().unwrap();
        let said = run_install(&options(root.path()), ServiceManager::Systemd);
        let unit = std::fs::read_to_string(under(root.path(), UNIT_PATH)).unwrap();
        assert!(!unit.contains("SupplementaryGroups"), "{unit}");
        assert!(said.contains("has no input group"), "{said}");
        std::fs::write(
            under(root.path(), "/etc/group"),
            "root:x:0:\ninputs:x:998:\ninput:x:105:\n",
        )
        .unwrap();
        let said = run_install(&options(root.path()), ServiceManager::Systemd);
        let unit = std::fs::read_to_string(under(root.path(), UNIT_PATH)).unwrap();
        assert!(unit.contains("\nSupplementaryGroups=input\n"), "{unit}");
        assert!(!said.contains("has no input group"), "{said}");
    }

    #[test]
    fn the_packaged_unit_is_the_one_install_writes() {
        assert_eq!(
            include_str!("../debian/lull-agent.service"),
            systemd_unit(Path::new("/usr/bin/lull-agent"), true),
            "agent/debian/lull-agent.service (in the .deb) differs from the unit install writes: \
             update it from `lull-agent install --root DIR --binary /usr/bin/lull-agent ...`"
        );
    }

    #[test]
    fn macos_gets_a_launchd_daemon() {
        let root = tempfile::tempdir().unwrap();
        let said = run_install(&options(root.path()), ServiceManager::Launchd);
        assert!(
            said.contains("launchctl load -w /Library/LaunchDaemons/org.lull.agent.plist"),
            "{said}"
        );
        assert!(under(root.path(), DATA_PATH).is_dir());
        let plist = std::fs::read_to_string(under(root.path(), PLIST_PATH)).unwrap();
        assert!(
            plist.contains("<string>/usr/local/bin/lull-agent</string>"),
            "{plist}"
        );
    }

    #[test]
    fn windows_gets_a_service_run_as_local_service() {
        let root = tempfile::tempdir().unwrap();
        let opts = InstallOptions {
            binary: PathBuf::from("C:/Program Files/Lull/lull-agent.exe"),
            ..options(root.path())
        };
        let said = run_install(&opts, ServiceManager::Windows);
        let layout = ServiceManager::Windows.layout();
        let config = std::fs::read_to_string(under(root.path(), layout.config)).unwrap();
        let parsed: crate::AgentConfig = toml::from_str(&config).unwrap();
        assert_eq!(parsed.data_dir, PathBuf::from("C:/ProgramData/Lull/agent"));
        assert_eq!(
            parsed.allowed_signers,
            Some(PathBuf::from("C:/ProgramData/Lull/allowed_signers"))
        );
        assert!(under(root.path(), layout.data).is_dir(), "{said}");
        assert_eq!(
            under(root.path(), layout.config),
            root.path().join("ProgramData/Lull/agent.toml")
        );
        // Registered, locked down and started, in that order; the binary's path quoted.
        let create = r#"sc.exe create LullAgent binPath= "\"C:/Program Files/Lull/lull-agent.exe\" service --config \"C:/ProgramData/Lull/agent.toml\"" start= auto obj= "NT AUTHORITY\LocalService" DisplayName= "Lull agent""#;
        let order = [
            create,
            "(if that fails: sc.exe config LullAgent",
            "sc.exe failure LullAgent reset= 86400 actions= restart/5000",
            "icacls C:/ProgramData/Lull/agent /inheritance:r /grant:r *S-1-5-32-544:(OI)(CI)F *S-1-5-18:(OI)(CI)F *S-1-5-19:(OI)(CI)M",
            "sc.exe start LullAgent",
        ];
        let mut at = 0;
        for line in order {
            let found = said[at..]
                .find(line)
                .unwrap_or_else(|| panic!("{line:?} not after byte {at} of:\n{said}"));
            at += found + line.len();
        }
        let mut out = Vec::new();
        uninstall(root.path(), true, true, ServiceManager::Windows, &mut out).unwrap();
        let said = String::from_utf8(out).unwrap();
        assert!(
            said.contains("would run: sc.exe delete LullAgent"),
            "{said}"
        );
        assert!(said.contains("would remove"), "{said}");
    }

    #[test]
    fn bad_options_are_refused_with_their_name() {
        let root = tempfile::tempdir().unwrap();
        for (opts, flag) in [
            (
                InstallOptions {
                    coordinator: "lull.example.org".into(),
                    ..options(root.path())
                },
                "--coordinator",
            ),
            (
                InstallOptions {
                    coordinator: "host:http".into(),
                    ..options(root.path())
                },
                "--coordinator",
            ),
            (
                InstallOptions {
                    ca_hash: "sha256:1234".into(),
                    ..options(root.path())
                },
                "--ca-hash",
            ),
            (
                InstallOptions {
                    binary: "lull-agent".into(),
                    ..options(root.path())
                },
                "--binary",
            ),
        ] {
            let err = install(&opts, ServiceManager::Systemd, &mut Vec::new()).unwrap_err();
            assert!(err.to_string().contains(flag), "{err}");
        }
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0);
    }
}
