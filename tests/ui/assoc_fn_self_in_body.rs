use multiproc::process_entry;

struct Worker;

impl Worker {
    fn step(n: u32) -> u32 {
        n + 1
    }

    #[process_entry]
    fn run(n: u32) -> u32 {
        Self::step(n)
    }
}

fn main() {}
