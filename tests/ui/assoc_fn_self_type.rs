use multiproc::process_entry;

#[derive(serde::Serialize, serde::Deserialize)]
struct Worker(u32);

impl Worker {
    #[process_entry]
    fn new(n: u32) -> Self {
        Worker(n)
    }
}

fn main() {}
