use multiproc::{Pool, entry, process_entry};
#[process_entry]
fn trivial(x: u64) -> u64 {
    x.wrapping_mul(3)
}
fn main() {
    let reps: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let pool = Pool::new(2).unwrap();
    let _ = pool.map(entry!(trivial), 0..20_000u64).unwrap();
    let mut best = f64::MAX;
    let s0 = std::time::Instant::now();
    for _ in 0..reps {
        let s = std::time::Instant::now();
        let v = pool.map(entry!(trivial), 0..20_000u64).unwrap();
        assert_eq!(v.len(), 20_000);
        best = best.min(s.elapsed().as_secs_f64());
    }
    println!(
        "best {:.3} us/task, mean {:.3}",
        best / 20_000.0 * 1e6,
        s0.elapsed().as_secs_f64() / reps as f64 / 20_000.0 * 1e6
    );
}
