//! The seed programs and the tour print what ../shared/seed-examples.md asks
//! for. Each runs in a fresh copy of this test binary, so that the output of
//! its child processes (which write to the inherited stdout) is captured.

mod common;
#[path = "../examples/seeds/mod.rs"]
mod seeds;

use std::collections::HashSet;
use std::process::Command;

const INNER: &str = "MULTIPROC_SEED_INNER";

/// Runs the seed named by `MULTIPROC_SEED_INNER` (or the tour, for "tour").
#[test]
#[ignore = "run by the tests below in a fresh process"]
fn inner_run_seed() {
    if !common::run_by_outer_test(INNER, "the seed tests of this file") {
        return;
    }
    let Some(which) = std::env::var_os(INNER) else {
        return;
    };
    let which = which.to_string_lossy().into_owned();
    // The harness has printed "test inner_run_seed ... " without a newline.
    println!();
    if which == "tour" {
        assert_eq!(seeds::tour(), 0);
        return;
    }
    let (_, run) = seeds::ALL
        .iter()
        .find(|(name, _)| name.starts_with(&which))
        .expect("seed name");
    run().unwrap();
}

fn run(which: &str) -> String {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "inner_run_seed",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(INNER, which)
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{which} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("1 passed"), "{stdout}");
    stdout
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

fn check_seed2(out: &str) {
    let mut items: Vec<&str> = out
        .lines()
        .filter(|l| l.ends_with(", 'hello']") && l.matches(", ").count() == 1)
        .collect();
    items.sort();
    assert_eq!(
        items,
        ["[0, 'hello']", "[1, 'hello']", "[2, 'hello']"],
        "{out}"
    );
}

fn check_seed3(out: &str) {
    assert!(out.lines().any(|l| l == "[42, None, 'hello']"), "{out}");
}

/// Every child's writes are visible to the parent and none are lost: the
/// dict has keys 0..4 plus the shared ones, the list is 0..5 then each child
/// once, each child printed the list with its own item in it, and the
/// server-side counter saw all five.
fn check_seed4(out: &str) {
    let dict = "{0: '1', 1: '1', 2: '1', 3: '1', 4: '1', '2': 2, 0.25: None}";
    assert!(out.lines().any(|l| l == dict), "{out}");
    let lists: Vec<Vec<i64>> = out
        .lines()
        .filter(|l| l.starts_with("[0, 1, 2, 3, 4"))
        .map(|l| {
            l.trim_matches(['[', ']'])
                .split(", ")
                .map(|n| n.parse().unwrap())
                .collect()
        })
        .collect();
    // Five children's prints, then the parent's.
    assert_eq!(lists.len(), 6, "{out}");
    let last = lists.last().unwrap();
    assert_eq!(&last[..5], &[0, 1, 2, 3, 4], "{out}");
    let mut tail = last[5..].to_vec();
    tail.sort();
    assert_eq!(tail, vec![0, 1, 2, 3, 4], "each child appended once: {out}");
    for printed in &lists[..5] {
        assert!(printed.len() > 5 && printed.len() <= 10, "{out}");
        assert_eq!(
            &printed[..],
            &last[..printed.len()],
            "a prefix of the final list: {out}"
        );
    }
    assert!(out.lines().any(|l| l == "children counted: 5"), "{out}");
}

#[test]
fn seed1_prints_three_hellos_then_done() {
    check_seed1(&run("seed 1"));
}

#[test]
fn seed2_prints_each_item_exactly_once() {
    check_seed2(&run("seed 2"));
}

#[test]
fn seed3_prints_the_message_from_the_child() {
    check_seed3(&run("seed 3"));
}

#[test]
fn seed4_shows_every_childs_writes() {
    check_seed4(&run("seed 4"));
}

#[test]
fn tour_runs_every_seed_and_summarises() {
    let out = run("tour");
    check_seed1(&out);
    check_seed2(&out);
    check_seed3(&out);
    check_seed4(&out);
    let summary = out.split("=== summary").nth(1).expect("summary");
    for seed in ["seed 1", "seed 2", "seed 3", "seed 4", "pool"] {
        assert!(summary.contains(&format!("ok    {seed}")), "{summary}");
    }
    assert!(summary.contains("5 programs ran, 0 failed"), "{summary}");
    assert!(summary.contains("148933 primes below 2000000"), "{summary}");
}
