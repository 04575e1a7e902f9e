//! Image commands: images, rmi, inspect, load, import, pull, login, logout, image prune,
//! image build-default, image verify.

use std::io::{BufRead, Read, Write};
use std::os::fd::AsFd;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde_json::json;
use strata_image::auth::Credentials;

use super::global_args::Global;
use super::output::{human_size, print_table, FormatArgs};
use super::progress::reporter;

#[derive(Args)]
pub struct ImagesArgs {
    #[command(flatten)]
    pub format: FormatArgs,
    /// Only show image IDs
    #[arg(long = "quiet-ids", short = 'q')]
    pub quiet_ids: bool,
}

#[derive(Args)]
pub struct RmiArgs {
    /// Images (name, ID or digest prefix)
    #[arg(required = true)]
    pub images: Vec<String>,
}

#[derive(Args)]
pub struct InspectArgs {
    /// Images (name, ID or digest prefix)
    #[arg(required = true)]
    pub images: Vec<String>,
}

#[derive(Args)]
pub struct LoadArgs {
    /// oci-archive or docker-archive tar (optionally compressed), or an OCI layout directory
    #[arg(long, short = 'i')]
    pub input: PathBuf,
    /// Name the loaded image (the archive must hold exactly one)
    #[arg(long, short = 't')]
    pub tag: Option<String>,
}

#[derive(Args)]
pub struct ImportArgs {
    /// Root filesystem tarball (plain, gzip or zstd)
    pub file: PathBuf,
    /// Name for the image (repo[:tag])
    pub name: String,
}

#[derive(Args)]
pub struct PullArgs {
    /// Image reference: [registry/]repo[:tag|@digest]
    pub reference: String,
    /// Allow plain HTTP to a registry that is not on the loopback interface
    #[arg(long)]
    pub insecure: bool,
    /// Credentials for this pull, USER:PASSWORD (otherwise those of `strata login`, or of
    /// Podman's or Docker's auth files)
    #[arg(long, value_name = "USER:PASSWORD")]
    pub creds: Option<String>,
}

#[derive(Args)]
pub struct LoginArgs {
    /// User name (asked on the terminal when absent)
    #[arg(short = 'u', long)]
    pub username: Option<String>,
    /// Read the password from stdin (otherwise it is asked on the terminal)
    #[arg(long = "password-stdin")]
    pub password_stdin: bool,
    /// Allow plain HTTP to a registry that is not on the loopback interface
    #[arg(long)]
    pub insecure: bool,
    /// Registry (host[:port])
    pub registry: String,
}

#[derive(Args)]
pub struct LogoutArgs {
    /// Registry (host[:port])
    pub registry: String,
}

#[derive(Subcommand)]
pub enum ImageCommand {
    /// List images
    #[command(alias = "list")]
    Ls(ImagesArgs),
    /// Remove images
    Rm(RmiArgs),
    /// Show image details
    Inspect(InspectArgs),
    /// Remove blobs and layers no image references
    Prune(PruneArgs),
    /// Build the default busybox:latest image from Debian's busybox-static (no network)
    BuildDefault,
    /// Load images from an archive or OCI layout
    Load(LoadArgs),
    /// Import a rootfs tarball
    Import(ImportArgs),
    /// Pull an image from a registry
    Pull(PullArgs),
    /// Check images against their digests (manifest, config, layer blobs, unpacked layers)
    Verify(VerifyArgs),
}

#[derive(Args)]
pub struct VerifyArgs {
    /// The image to check (all images when absent)
    pub image: Option<String>,
    #[command(flatten)]
    pub format: FormatArgs,
}

#[derive(Args)]
pub struct PruneArgs {
    #[command(flatten)]
    pub format: FormatArgs,
}

pub fn image_command(g: &Global, c: ImageCommand) -> anyhow::Result<()> {
    match c {
        ImageCommand::Ls(a) => images(g, a),
        ImageCommand::Rm(a) => rmi(g, a),
        ImageCommand::Inspect(a) => inspect(g, a),
        ImageCommand::Prune(a) => prune(g, a),
        ImageCommand::BuildDefault => build_default(g),
        ImageCommand::Load(a) => load(g, a),
        ImageCommand::Import(a) => import(g, a),
        ImageCommand::Pull(a) => pull(g, a),
        ImageCommand::Verify(a) => verify(g, a),
    }
}

pub fn images(g: &Global, a: ImagesArgs) -> anyhow::Result<()> {
    let store = g.image_store()?;
    let list = store.list()?;
    if a.format.is_json() {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    if a.quiet_ids {
        for i in &list {
            println!("{}", i.id.get(7..19).unwrap_or(&i.id));
        }
        return Ok(());
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|i| {
            let (repo, tag) = match &i.name {
                Some(n) => {
                    let (r, t) = strata_image::reference::split(n);
                    (r.to_string(), t.to_string())
                }
                None => ("<none>".into(), "<none>".into()),
            };
            let created = match &i.damaged {
                Some(_) => "DAMAGED".to_string(),
                None => i.created.clone().unwrap_or_default(),
            };
            vec![
                repo,
                tag,
                i.id.get(7..19).unwrap_or(&i.id).to_string(),
                created,
                human_size(i.size),
            ]
        })
        .collect();
    print_table(&["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"], &rows);
    let damaged: Vec<String> = list
        .iter()
        .filter(|i| i.damaged.is_some())
        .map(|i| i.name.clone().unwrap_or_else(|| i.manifest_digest.clone()))
        .collect();
    if !damaged.is_empty() {
        eprintln!(
            "strata: damaged image(s): {}: `strata image verify` says what; pull or load again to repair",
            damaged.join(", ")
        );
    }
    Ok(())
}

pub fn rmi(g: &Global, a: RmiArgs) -> anyhow::Result<()> {
    let store = g.image_store()?;
    if let [name] = a.images.as_slice() {
        let d = store.remove(name)?;
        println!("Untagged: {name} ({d})");
        return Ok(());
    }
    // Several images: remove what can be removed, report each failure, fail at the end.
    let mut failed = 0;
    for name in &a.images {
        match store.remove(name) {
            Ok(d) => println!("Untagged: {name} ({d})"),
            Err(e) => {
                eprintln!("strata: error: {e}");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} of {} images could not be removed", a.images.len());
    }
    Ok(())
}

pub fn inspect(g: &Global, a: InspectArgs) -> anyhow::Result<()> {
    let store = g.image_store()?;
    let mut out = Vec::new();
    for name in &a.images {
        let img = store.resolve(name)?;
        let layers: Vec<String> = img
            .layers()
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        out.push(json!({
            "Id": img.id().as_str(),
            "RepoTags": img.name().map(|n| vec![n.to_string()]).unwrap_or_default(),
            "Digest": img.digest().as_str(),
            "Created": img.config().created(),
            "Architecture": img.config().architecture().to_string(),
            "Os": img.config().os().to_string(),
            "Config": img.config().config(),
            "RootFS": img.config().rootfs(),
            "Manifest": img.manifest(),
            "Size": img.manifest().layers().iter().map(|l| l.size()).sum::<u64>(),
            "LayerDirs": layers,
        }));
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

pub fn load(g: &Global, a: LoadArgs) -> anyhow::Result<()> {
    let store = g.image_store()?;
    let progress = reporter(g.quiet);
    let names = strata_image::import::load(&store, &a.input, a.tag.as_deref(), progress.as_ref())
        .with_context(|| format!("load {}", a.input.display()))?;
    for n in names {
        println!("Loaded image: {n}");
    }
    Ok(())
}

pub fn import(g: &Global, a: ImportArgs) -> anyhow::Result<()> {
    let store = g.image_store()?;
    let progress = reporter(g.quiet);
    let d = strata_image::import::import_rootfs(&store, &a.file, &a.name, progress.as_ref())
        .with_context(|| format!("import {}", a.file.display()))?;
    println!("{d}");
    Ok(())
}

pub fn prune(g: &Global, a: PruneArgs) -> anyhow::Result<()> {
    let store = g.image_store()?;
    let s = store.prune()?;
    if a.format.is_json() {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        println!(
            "Deleted {} blobs and {} layers, reclaimed {}",
            s.blobs,
            s.layers,
            human_size(s.bytes)
        );
    }
    if !s.damaged.is_empty() {
        eprintln!(
            "strata: kept every blob and layer: damaged image(s) {} (which layers they use is unknown); \
             repair with `strata pull`/`strata load` of the image or remove it with `strata rmi`, then prune again",
            s.damaged.join(", ")
        );
    }
    Ok(())
}

/// `strata image verify [IMAGE]`: every digest of the image(s) checked; fails when one is damaged.
pub fn verify(g: &Global, a: VerifyArgs) -> anyhow::Result<()> {
    let store = g.image_store()?;
    let reports = store.verify(a.image.as_deref())?;
    if a.format.is_json() {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        for r in &reports {
            if r.problems.is_empty() {
                println!("OK {} ({} digests checked)", r.name, r.checked);
            } else {
                println!("DAMAGED {}", r.name);
                for p in &r.problems {
                    println!("  {p}");
                }
            }
        }
    }
    let damaged: Vec<&str> = reports
        .iter()
        .filter(|r| !r.problems.is_empty())
        .map(|r| r.name.as_str())
        .collect();
    if !damaged.is_empty() {
        bail!(
            "damaged: {}: load or pull {} again to repair {}",
            damaged.join(", "),
            if damaged.len() == 1 { "it" } else { "them" },
            if damaged.len() == 1 { "it" } else { "them" },
        );
    }
    Ok(())
}

pub fn build_default(g: &Global) -> anyhow::Result<()> {
    let store = g.image_store()?;
    let progress = reporter(g.quiet);
    let d = strata_image::default_image::build(&store, progress.as_ref())?;
    println!("Built image: {} ({d})", strata_image::default_image::NAME);
    Ok(())
}

pub fn pull(g: &Global, a: PullArgs) -> anyhow::Result<()> {
    let store = g.image_store()?;
    let progress = reporter(g.quiet);
    let credentials = match a.creds.as_deref() {
        Some(c) => Some(Credentials::parse(c).context(
            "bad --creds: expected USER:PASSWORD (or store them once with `strata login REGISTRY`)",
        )?),
        None => None,
    };
    let opts = strata_image::pull::PullOptions {
        insecure: a.insecure,
        credentials,
    };
    let (name, digest) = match strata_image::pull::pull(
        &store,
        &a.reference,
        &opts,
        progress.as_ref(),
    ) {
        Ok(r) => r,
        Err(e @ strata_image::Error::AuthRequired { .. }) => {
            let reg = registry_of(&e);
            bail!(
                "pull {}: {e}: log in with `strata login {reg}` or pass --creds USER:PASSWORD",
                a.reference
            )
        }
        Err(e @ strata_image::Error::AuthRefused { .. }) => {
            let reg = registry_of(&e);
            bail!("pull {}: {e}: check them and log in again with `strata login {reg}` (or pass --creds USER:PASSWORD)", a.reference)
        }
        Err(e) => return Err(e.into()),
    };
    println!("Pulled {name} ({digest})");
    Ok(())
}

fn registry_of(e: &strata_image::Error) -> String {
    match e {
        strata_image::Error::AuthRequired { registry }
        | strata_image::Error::AuthRefused { registry, .. } => registry.clone(),
        _ => String::new(),
    }
}

/// `strata login`: checks the credentials with the registry, then stores them (0600).
pub fn login(g: &Global, a: LoginArgs) -> anyhow::Result<()> {
    let registry = strata_image::auth::registry_key(&a.registry);
    if registry.is_empty() {
        bail!("no registry given: strata login [--username USER] [--password-stdin] HOST[:PORT]");
    }
    let username = match a.username {
        Some(u) => u,
        None => prompt("Username: ", true)?,
    };
    if username.is_empty() || username.contains(':') {
        bail!("bad user name {username:?}: it must not be empty or contain ':'");
    }
    let password = if a.password_stdin {
        let mut p = String::new();
        std::io::stdin()
            .read_to_string(&mut p)
            .context("read the password from stdin")?;
        p.trim_end_matches(['\n', '\r']).to_string()
    } else {
        prompt("Password: ", false)?
    };
    if password.is_empty() {
        bail!("empty password: write it to stdin with --password-stdin, or type it when asked");
    }
    let c = Credentials { username, password };
    match strata_image::pull::check_login(&registry, &c, a.insecure) {
        Ok(()) => {}
        Err(e @ strata_image::Error::AuthRefused { .. }) => {
            bail!("login to {registry}: {e}: nothing was stored")
        }
        Err(e) => return Err(e).with_context(|| format!("login to {registry}")),
    }
    let store = g.image_store()?;
    strata_image::auth::save(store.root(), &registry, &c)?;
    println!("Login Succeeded");
    Ok(())
}

/// `strata logout`: forgets the stored credentials of a registry.
pub fn logout(g: &Global, a: LogoutArgs) -> anyhow::Result<()> {
    let registry = strata_image::auth::registry_key(&a.registry);
    let store = g.image_store()?;
    if !strata_image::auth::remove(store.root(), &registry)? {
        bail!(
            "not logged in to {registry} (no credentials for it in {})",
            strata_image::auth::store_file(store.root()).display()
        );
    }
    println!("Removed login credentials for {registry}");
    Ok(())
}

/// Asks on the controlling terminal (the password without echo); stdin stays untouched.
fn prompt(what: &str, echo: bool) -> anyhow::Result<String> {
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .with_context(|| {
            format!(
                "no terminal to ask for the {}: pass --username and --password-stdin",
                what.trim_end_matches(": ").to_lowercase()
            )
        })?;
    let saved = nix::sys::termios::tcgetattr(tty.as_fd()).ok();
    if let (false, Some(t)) = (echo, &saved) {
        let mut quiet = t.clone();
        quiet
            .local_flags
            .remove(nix::sys::termios::LocalFlags::ECHO);
        let _ =
            nix::sys::termios::tcsetattr(tty.as_fd(), nix::sys::termios::SetArg::TCSANOW, &quiet);
    }
    let mut w = &tty;
    let _ = w.write_all(what.as_bytes());
    let mut line = String::new();
    let r = std::io::BufReader::new(&tty).read_line(&mut line);
    if let (false, Some(t)) = (echo, &saved) {
        let _ = nix::sys::termios::tcsetattr(tty.as_fd(), nix::sys::termios::SetArg::TCSANOW, t);
        let _ = w.write_all(b"\n");
    }
    r.context("read from the terminal")?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}
