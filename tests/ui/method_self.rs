use multiproc::process_entry;

struct Worker;

impl Worker {
    #[process_entry]
    fn run(&self, n: u32) -> u32 {
        n
    }
}

fn main() {}
