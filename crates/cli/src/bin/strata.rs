//! `strata`: the user command line. main() only parses arguments and dispatches to the command
//! modules in src/strata/.

#[path = "../strata/mod.rs"]
mod strata;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use strata::image;

#[derive(Parser)]
#[command(
    name = "strata",
    version,
    about = "Run OCI images as containers or microVMs"
)]
struct Cli {
    #[command(flatten)]
    global: strata::Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List images
    Images(image::ImagesArgs),
    /// Remove images (their blobs and layers go with `strata image prune`)
    Rmi(image::RmiArgs),
    /// Show an image's manifest, config and layer directories (JSON)
    Inspect(image::InspectArgs),
    /// Load images from an oci-archive, docker-archive or OCI layout directory
    Load(image::LoadArgs),
    /// Import a plain rootfs tarball as a one-layer image
    Import(image::ImportArgs),
    /// Manage images
    #[command(subcommand)]
    Image(image::ImageCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    strata::init();
    let result = match cli.command {
        Command::Images(a) => image::images(&cli.global, a),
        Command::Rmi(a) => image::rmi(&cli.global, a),
        Command::Inspect(a) => image::inspect(&cli.global, a),
        Command::Load(a) => image::load(&cli.global, a),
        Command::Import(a) => image::import(&cli.global, a),
        Command::Image(c) => image::image_command(&cli.global, c),
    };
    strata::exit(result)
}
