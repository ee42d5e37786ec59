//! `inspect VM`: everything about one VM, as text or JSON.

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::ExitCode;

use indicatif::HumanBytes;
use qemu_compose::compose::format_size;
use qemu_compose::engine::inspect::{self, Inspection};
use qemu_compose::engine::{VmStatus, ssh};

use super::{GlobalArgs, InspectArgs, TextFormat, output, project};

pub fn run(global: &GlobalArgs, args: &InspectArgs) -> anyhow::Result<ExitCode> {
    let project = project::load_naming(global, std::slice::from_ref(&args.vm))?;
    let vm = project::selected(&project, std::slice::from_ref(&args.vm))?
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("no VM named {:?}", args.vm))?;
    let host = project::host(global)?;
    let status = inspect::probe_status(&project, &host, vm);
    let info = inspect::inspect(&project, &host, vm, status)?;
    let mut out = output::stdout();
    match args.format {
        TextFormat::Json => output::json(&mut out, &info)?,
        TextFormat::Text => out.write_all(text(&info).as_bytes())?,
    }
    Ok(ExitCode::SUCCESS)
}

/// The text form: one section per topic, `key: value` lines.
fn text(i: &Inspection) -> String {
    let mut o = String::new();
    let c = i.config;
    let status = match &i.state {
        VmStatus::Broken(reason) => format!("broken ({reason})"),
        other => other.word().to_string(),
    };
    let _ = writeln!(o, "VM {} (project {})", i.name, i.project);
    let _ = writeln!(o, "  status:   {status}");
    if let Some(health) = &i.health {
        let streak = health.failing_streak;
        let _ = writeln!(o, "  health:   {}", health.last_words());
        if streak > 0 {
            let _ = writeln!(o, "            {streak} failure(s) in a row");
        }
    }
    let _ = writeln!(o, "  image:    {}", image_text(&c.image));
    let _ = writeln!(o, "  cpu:      {}", c.cpu);
    let _ = writeln!(o, "  memory:   {} MiB", c.memory_mib);
    let _ = writeln!(o, "  disk:     {}", format_size(c.disk_size_bytes));
    let _ = writeln!(o, "  user:     {}", c.user);
    let accel = i.accel.accel.unwrap_or("none");
    let _ = writeln!(o, "  accel:    {accel} ({})", i.accel.reason);
    if !c.depends_on.is_empty() {
        let _ = writeln!(o, "  depends:  {}", c.depends_on.join(", "));
    }
    if !c.environment.is_empty() {
        let keys: Vec<&str> = c.environment.keys().map(String::as_str).collect();
        let _ = writeln!(o, "  env:      {}", keys.join(", "));
    }
    if !c.provision.is_empty() {
        let _ = writeln!(
            o,
            "  provision: {} command(s), run once per instance",
            c.provision.len()
        );
    }

    let d = &i.disks;
    let _ = writeln!(o, "Disks ({})", d.device_note);
    let usage = d.instance.usage.map_or_else(
        || "not-created".to_string(),
        |u| {
            format!(
                "{}, {} used",
                HumanBytes(u.virtual_size),
                HumanBytes(u.bytes_used)
            )
        },
    );
    let _ = writeln!(
        o,
        "  {}  instance  {} (qcow2, {usage})",
        d.instance.device,
        d.instance.path.display()
    );
    let _ = writeln!(
        o,
        "             base {}{}",
        d.instance.base_image,
        d.instance
            .base_format
            .as_deref()
            .map(|f| format!(" ({f})"))
            .unwrap_or_default()
    );
    if let Some(new) = &d.instance.base_changed {
        let _ = writeln!(
            o,
            "             the compose file names {}: {}",
            new.compose_image, new.hint
        );
    }
    for v in &d.volumes {
        let _ = writeln!(
            o,
            "  {}  volume {} -> {} ({}), UUID {}, serial {}, {}",
            v.device,
            v.volume,
            v.mount_point,
            if v.read_only { "ro" } else { "rw" },
            v.uuid.as_deref().unwrap_or("(not-created)"),
            v.serial,
            v.image.display()
        );
    }
    let _ = writeln!(
        o,
        "  {}  seed      {}{}",
        d.seed.device,
        d.seed.path.display(),
        if d.seed.exists { "" } else { " (not written)" }
    );

    if !i.bind_mounts.is_empty() {
        let _ = writeln!(o, "Bind mounts (9p)");
        for b in &i.bind_mounts {
            let _ = writeln!(
                o,
                "  {} -> {} ({}), tag {}, security_model {}, {}",
                b.source.display(),
                b.target,
                if b.read_only { "ro" } else { "rw" },
                b.tag,
                b.security_model,
                match &b.options {
                    Some(opts) => format!("automount with {opts}"),
                    None => "not automounted".to_string(),
                }
            );
            if b.source_kind == "missing" {
                let _ = writeln!(o, "    warning: the source does not exist");
            } else if b.source_kind == "file" {
                let _ = writeln!(o, "    a file, shared through {}", b.shared_path.display());
            }
        }
    }

    let n = &i.network;
    let _ = writeln!(o, "Network ({} mode)", n.mode);
    let _ = writeln!(o, "  mac:      {}", n.mac);
    let ssh = n.ssh_port.map_or_else(
        || "allocated at up".to_string(),
        |p| format!("127.0.0.1:{p} -> 22/tcp"),
    );
    let _ = writeln!(o, "  ssh:      {ssh}");
    for p in &n.ports {
        let _ = writeln!(o, "  port:     {p}");
    }
    if let Some(running) = n.switch_running {
        let switch = if running { "running" } else { "not running" };
        let _ = writeln!(o, "Project networks (switch {switch})");
        if n.networks.is_empty() {
            let _ = writeln!(o, "  addresses are allocated at up");
        }
        for l in &n.networks {
            let _ = writeln!(
                o,
                "  {}: {} (mac {}), names: {}",
                l.network,
                l.address,
                l.mac,
                l.names.join(" ")
            );
        }
    }
    if let Some(cmd) = &i.ssh_command {
        let _ = writeln!(o, "SSH command\n  {}", ssh::readable_line(cmd));
    }
    let _ = writeln!(
        o,
        "Console\n  log in as {} with the password in {} (first line)",
        i.config.user,
        i.console_password_file.display()
    );
    if let Some(q) = &i.qemu {
        match &q.started {
            Some(started) if !q.planned => {
                let _ = writeln!(o, "QEMU (started {started})");
            }
            _ => {
                let _ = writeln!(
                    o,
                    "QEMU (planned: not running; the command line the next start would use)"
                );
                let port = match q.ssh_port_basis {
                    "fixed" => "fixed by the compose file",
                    "previous" => "the last start's, kept if still free then",
                    _ => "the first free port now; the real one is allocated at start",
                };
                let _ = writeln!(o, "  ssh port {} ({port})", q.ssh_port);
            }
        }
        let _ = writeln!(o, "  {} \\", q.binary.display());
        let mut args = q.argv.iter().peekable();
        while let Some(arg) = args.next() {
            let value = args.next_if(|next| !next.starts_with('-'));
            let line = match value {
                Some(v) => format!("{} {}", ssh::readable_word(arg), ssh::readable_word(v)),
                None => ssh::readable_word(arg),
            };
            let more = if args.peek().is_some() { " \\" } else { "" };
            let _ = writeln!(o, "    {line}{more}");
        }
    }
    if let Some(reason) = &i.qemu_not_planned {
        let _ = writeln!(o, "QEMU (not running; no command line planned: {reason})");
    }
    let p = &i.paths;
    let _ = writeln!(o, "Paths");
    let _ = writeln!(o, "  folder:   {}", p.dir.display());
    let _ = writeln!(o, "  qmp:      {}", p.qmp_socket.display());
    let _ = writeln!(o, "  serial:   {}", p.serial_socket.display());
    let _ = writeln!(o, "  log:      {}", p.serial_log.display());
    let _ = writeln!(o, "  pidfile:  {}", p.pidfile.display());
    o
}

fn image_text(image: &qemu_compose::compose::ImageSource) -> String {
    match image {
        qemu_compose::compose::ImageSource::Url(u) => u.clone(),
        qemu_compose::compose::ImageSource::Path(p) => p.display().to_string(),
    }
}
