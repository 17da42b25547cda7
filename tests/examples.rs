//! The seed examples and the tour print what ../shared/seed-examples.md asks for.

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::Command;

/// Path of a built example, building it if `cargo test` has not.
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let path = profile_dir.join("examples").join(name);
    if !path.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--example", name])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .unwrap();
        assert!(status.success());
    }
    path
}

fn run(name: &str) -> String {
    let out = Command::new(example(name)).output().unwrap();
    assert!(
        out.status.success(),
        "{name} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn check_seed1(out: &str) {
    let lines: Vec<&str> = out.lines().filter(|l| !l.is_empty()).collect();
    let hellos: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.starts_with("hello AAA"))
        .collect();
    assert_eq!(hellos.len(), 3, "{out}");
    let pids: HashSet<&str> = hellos
        .iter()
        .map(|l| l.rsplit("pid ").next().unwrap())
        .collect();
    assert_eq!(pids.len(), 3, "three different pids: {out}");
    let done = lines.iter().position(|l| *l == "done").expect("done");
    let last_hello = lines
        .iter()
        .rposition(|l| l.starts_with("hello AAA"))
        .unwrap();
    assert!(last_hello < done, "done comes after every hello: {out}");
}

#[test]
fn seed1_prints_three_hellos_then_done() {
    check_seed1(&run("seed1_processes"));
}

#[test]
fn tour_runs_every_seed_and_summarises() {
    let out = run("tour");
    check_seed1(&out);
    let summary = out.split("=== summary").nth(1).expect("summary");
    assert!(summary.contains("ok    seed 1"), "{summary}");
    assert!(summary.contains(" 0 failed"), "{summary}");
}
