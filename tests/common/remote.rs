//! A remote manager in a child process, for the tests that need one
//! (included with `#[path]` by those alone, so that no other test binary
//! registers its entry).

use std::net::TcpListener;

use multiproc::{Fd, JoinHandle, Manager, process_entry, spawn};

/// The key the remote manager and its clients prove.
pub const KEY: &[u8] = b"correct horse battery staple";

#[process_entry]
pub fn serve_remote(listener: Fd, key: Vec<u8>) -> String {
    let listener = TcpListener::from(listener.into_owned_fd());
    match Manager::serve_on(listener, &key) {
        Ok(()) => "returned".into(),
        Err(e) => e.to_string(),
    }
}

/// A remote server in a child process, its address, and a kill-on-drop guard.
pub struct Remote {
    pub addr: String,
    pub server: Option<JoinHandle<String>>,
}

impl Remote {
    pub fn start() -> Remote {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = spawn!(
            serve_remote,
            Fd::from(std::os::fd::OwnedFd::from(listener)),
            KEY.to_vec()
        )
        .unwrap();
        Remote {
            addr,
            server: Some(server),
        }
    }

    #[allow(dead_code)] // used by one of the two suites
    pub fn pid(&self) -> u32 {
        self.server.as_ref().unwrap().pid()
    }
}

impl Drop for Remote {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            let _ = server.kill();
            let _ = server.join();
        }
    }
}
