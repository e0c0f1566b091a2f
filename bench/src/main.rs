//! `bench [all|footprint|exec|api|terminal|copy|scale]... [--quick]`
//!
//! See BENCHMARKS.md for what each figure means and the numbers of the last
//! full run.

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use clap::Parser;

use bench::{Options, Section};

#[derive(Parser, Debug)]
#[command(about = "Benchmarks against OpenSSH, side by side in one run")]
struct Args {
    /// What to run: all, footprint, exec, api, terminal, copy, scale.
    #[arg(default_value = "all")]
    sections: Vec<String>,
    /// Everything small (seconds): a smoke test of the harness.
    #[arg(long)]
    quick: bool,
    /// Where to write the results (default: BENCHMARKS.md for a full `all`,
    /// nowhere otherwise).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Do not rebuild alpacon-server, alpamon and alpacon first.
    #[arg(long)]
    no_build: bool,
    /// Most simulated agents to try in the scale section.
    #[arg(long)]
    scale_max: Option<usize>,
}

/// Builds the binaries under test with the same profile as this one, so a
/// `cargo run --release -p bench` never measures stale ones.
fn build_binaries(bin_dir: &std::path::Path) -> anyhow::Result<()> {
    let Ok(cargo) = std::env::var("CARGO") else {
        return Ok(());
    };
    let mut c = Command::new(cargo);
    c.arg("build")
        .args(["-p", "alpacon-server", "-p", "alpamon", "-p", "alpacon"])
        .current_dir(bench::workspace_root());
    if bin_dir.ends_with("release") {
        c.arg("--release");
    }
    eprintln!("bench: building the binaries under test …");
    let st = c.status()?;
    if !st.success() {
        anyhow::bail!("cargo build failed ({st})");
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut sections = Vec::new();
    for s in &args.sections {
        match Section::parse(s) {
            Some(v) => sections.extend(v),
            None => {
                eprintln!("bench: unknown section {s:?} (all, footprint, exec, api, terminal, copy, scale)");
                return ExitCode::from(2);
            }
        }
    }
    sections.sort();
    sections.dedup();
    // The binaries under test sit next to this one (target/<profile>/).
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(PathBuf::from))
        .unwrap_or_default();
    if std::env::var_os("ALPACON_BIN_DIR").is_none() {
        std::env::set_var("ALPACON_BIN_DIR", &exe_dir);
    }
    if !args.no_build {
        if let Err(e) = build_binaries(&exe_dir) {
            eprintln!("bench: {e:#}");
            return ExitCode::FAILURE;
        }
    }
    let full_all = !args.quick && sections.len() == Section::ALL.len();
    let report = bench::run(&Options {
        quick: args.quick,
        sections,
        scale_max: args.scale_max,
    });
    let command = format!(
        "cargo run --release -p bench -- {}{}",
        args.sections.join(" "),
        if args.quick { " --quick" } else { "" }
    );
    println!("{}", report.table());
    println!("{}", report.notes_md());
    let out = args
        .out
        .clone()
        .or_else(|| full_all.then(|| bench::workspace_root().join("BENCHMARKS.md")));
    if let Some(p) = out {
        match bench::report::write_into(&p, &report.markdown(&command)) {
            Ok(()) => eprintln!("bench: wrote {}", p.display()),
            Err(e) => {
                eprintln!("bench: cannot write {}: {e:#}", p.display());
                return ExitCode::FAILURE;
            }
        }
    }
    if report.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
