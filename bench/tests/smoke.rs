//! The quick mode of every section, as CI can afford it: real gateway,
//! agent, CLI, sshd (when installed) and simulated agents, all small. No
//! assertion on any time: only that every piece runs and reports.
//!
//! Needs the binaries built (`cargo build --workspace --bins`, as
//! scripts/test does) and root (the agent runs commands as root).

use bench::{Options, Section};

#[test]
fn quick_mode_runs_every_section() {
    if !alpacon_e2e::is_root() {
        eprintln!("skipped: the benchmark's agent runs commands as root");
        return;
    }
    let rep = bench::run(&Options {
        quick: true,
        sections: Section::ALL.to_vec(),
        scale_max: None,
    });
    assert!(rep.errors.is_empty(), "sections failed: {:#?}", rep.errors);
    for s in Section::ALL {
        assert!(
            rep.rows.iter().any(|r| r.section == s.name()),
            "no figures from {}",
            s.name()
        );
    }
    let md = rep.markdown("bench -- all --quick");
    assert!(
        md.contains("| figure | ours | OpenSSH | ratio | goal |"),
        "{md}"
    );
    assert!(md.contains("### Machine"), "{md}");
    println!("{}", rep.table());
}
