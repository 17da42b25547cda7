use multiproc::process_entry;

struct Worker;

// Inside another macro's input the attribute cannot tell where the fn will
// land, so rustc reports the struct it cannot place in the `impl`, noting
// the macro whose name says what to do.
macro_rules! worker_methods {
    () => {
        impl Worker {
            #[process_entry]
            fn make(n: u32) -> u32 {
                n
            }
        }
    };
}

worker_methods!();

fn main() {}
