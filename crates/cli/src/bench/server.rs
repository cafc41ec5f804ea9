//! The servers `cport bench` compares: the tutorials' I/O models as `cport
//! serve --model NAME` runs them (the port model once per backend), and the
//! peer echo servers of crates/bench that cport is measured against.
//!
//! On Windows the port model is one row, port-iocp (the native completion
//! port, `--backend auto`); the epoll model, the Linux backends, the
//! shards and the peers are Linux's: [`Server::unavailable`] says why.

use std::path::{Path, PathBuf};

use cport_models::Model;

use crate::Usage;

/// A peer echo server (crates/bench/src/bin). Its name is its binary's.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Peer {
    /// A plain tokio server, a task per connection: the reference.
    Tokio,
    /// The leanest io_uring server: the bound of any io_uring design.
    Uring,
    /// A plain edge-triggered epoll server.
    Epoll,
}

impl Peer {
    pub const ALL: [Peer; 3] = [Peer::Tokio, Peer::Uring, Peer::Epoll];

    pub fn name(self) -> &'static str {
        match self {
            Peer::Tokio => "tokio-echo",
            Peer::Uring => "uring-echo",
            Peer::Epoll => "epoll-echo",
        }
    }
}

/// One server of the comparison.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Server {
    /// Any model but `port`, by `cport serve --model NAME`.
    Model(Model),
    /// `cport serve --model port --backend uring`.
    PortUring,
    /// `cport serve --model port --backend epoll`.
    PortEpoll,
    /// `cport serve --model port` on Windows: the native completion port.
    PortIocp,
    /// `cport serve --shards N --backend uring`: a port of one thread per
    /// shard, the leanest servers' shape.
    ShardsUring,
    /// `cport serve --shards N --backend epoll`.
    ShardsEpoll,
    Peer(Peer),
}

/// Names in `--servers` that stand for several servers: every model row;
/// port-uring and port-epoll; shards-uring and shards-epoll; the three
/// peers.
const GROUPS: [&str; 4] = ["models", "port", "shards", "peers"];

impl Server {
    /// The port's rows here: one per Linux backend, or Windows' own.
    pub fn ports() -> Vec<Server> {
        if cfg!(windows) {
            vec![Server::PortIocp]
        } else {
            vec![Server::PortUring, Server::PortEpoll]
        }
    }

    /// The model rows, in the tutorials' order (the unavailable ones
    /// included: [`Server::unavailable`]).
    pub fn models() -> Vec<Server> {
        let mut v = Vec::new();
        for m in Model::ALL {
            if m == Model::Port {
                v.extend(Server::ports());
            } else {
                v.push(Server::Model(m));
            }
        }
        v
    }

    /// Every server, in the order runs go: the models, the sharded port,
    /// then the peers.
    pub fn all() -> Vec<Server> {
        let mut v = Server::models();
        v.extend([Server::ShardsUring, Server::ShardsEpoll]);
        v.extend(Peer::ALL.map(Server::Peer));
        v
    }

    /// The name of the row, in the tables, the CSV and `--servers`.
    pub fn name(self) -> &'static str {
        match self {
            Server::Model(m) => m.name(),
            Server::PortUring => "port-uring",
            Server::PortEpoll => "port-epoll",
            Server::PortIocp => "port-iocp",
            Server::ShardsUring => "shards-uring",
            Server::ShardsEpoll => "shards-epoll",
            Server::Peer(p) => p.name(),
        }
    }

    pub fn by_name(name: &str) -> Option<Server> {
        Server::all().into_iter().find(|s| s.name() == name)
    }

    /// A server of another system's list, by name: its own row there, so
    /// that naming it here says why it cannot run.
    fn elsewhere(name: &str) -> Option<Server> {
        [
            Server::PortUring,
            Server::PortEpoll,
            Server::PortIocp,
            Server::ShardsUring,
            Server::ShardsEpoll,
        ]
        .into_iter()
        .chain(Peer::ALL.map(Server::Peer))
        .find(|s| s.name() == name)
    }

    /// Why this server cannot run on this system, or `None`.
    pub fn unavailable(self) -> Option<String> {
        let linux = |what: &str| Some(format!("{} is Linux's: {what}", self.name()));
        match self {
            Server::Model(m) => m.unavailable(),
            Server::PortIocp if cfg!(unix) => Some(
                "port-iocp is the port on Windows' own completion port: on Linux the port \
                 runs on io_uring or epoll (port-uring, port-epoll)"
                    .into(),
            ),
            Server::PortUring | Server::PortEpoll if cfg!(windows) => linux(
                "the port runs on io_uring or epoll there; on Windows it runs on the native \
                 completion port (port-iocp)",
            ),
            Server::ShardsUring | Server::ShardsEpoll if cfg!(windows) => linux(
                "the shards' listeners share their address through SO_REUSEPORT, which \
                 Windows lacks",
            ),
            Server::Peer(_) if cfg!(windows) => linux(
                "the peers of crates/bench (tokio-echo, uring-echo, epoll-echo) are built \
                 beside the Linux cport and measured against it; uring-echo and epoll-echo \
                 are io_uring and epoll servers",
            ),
            _ => None,
        }
    }

    pub fn needs_uring(self) -> bool {
        matches!(
            self,
            Server::PortUring | Server::ShardsUring | Server::Peer(Peer::Uring)
        )
    }

    /// Whether `--threads` sizes it: the models other than the port have
    /// their own threading, which is what they show.
    pub fn takes_threads(self) -> bool {
        matches!(
            self,
            Server::PortUring
                | Server::PortEpoll
                | Server::PortIocp
                | Server::ShardsUring
                | Server::ShardsEpoll
                | Server::Peer(_)
        )
    }

    /// The program and arguments that start it on an ephemeral port.
    /// `cport` is the running executable; the peers are looked for beside
    /// it, where cargo builds every binary of the workspace.
    ///
    /// `threads` sizes the servers that take it: a peer runs that many
    /// threads; the port runs `threads` at once (its concurrency) with at
    /// least two workers, so that a worker blocked in a system call has a
    /// replacement, as bench/serve.sh sized it for one core. `buffer_size`
    /// is given to every server (`--buffer-size`).
    pub fn command(
        self,
        cport: &Path,
        threads: u32,
        buffer_size: Option<u32>,
    ) -> (PathBuf, Vec<String>) {
        let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // Windows' port takes no --backend but auto, its default.
        let port = |backend: Option<&str>| {
            let mut a = owned(&["serve", "--port", "0", "--model", "port"]);
            if let Some(b) = backend {
                a.push("--backend".into());
                a.push(b.into());
            }
            a.extend(owned(&["--no-udp", "--workers"]));
            a.push(threads.max(2).to_string());
            a.push("--concurrency".into());
            a.push(threads.to_string());
            a
        };
        let shards = |backend: &str| {
            let mut a = owned(&["serve", "--port", "0", "--backend"]);
            a.push(backend.into());
            a.push("--shards".into());
            a.push(threads.to_string());
            a
        };
        let (program, mut args) = match self {
            Server::PortUring => (cport.into(), port(Some("uring"))),
            Server::PortEpoll => (cport.into(), port(Some("epoll"))),
            Server::PortIocp => (cport.into(), port(None)),
            Server::ShardsUring => (cport.into(), shards("uring")),
            Server::ShardsEpoll => (cport.into(), shards("epoll")),
            Server::Model(Model::Callback) => (
                cport.into(),
                owned(&[
                    "serve",
                    "--port",
                    "0",
                    "--model",
                    "callback",
                    "--backend",
                    "auto",
                ]),
            ),
            Server::Model(m) => (
                cport.into(),
                owned(&["serve", "--port", "0", "--model", m.name()]),
            ),
            Server::Peer(p) => {
                let mut a = owned(&["--port", "0", "--threads"]);
                a.push(threads.to_string());
                (peer_path(cport, p), a)
            }
        };
        if let Some(n) = buffer_size {
            args.push("--buffer-size".into());
            args.push(n.to_string());
        }
        (program, args)
    }

    /// Descriptors the server holds per connection: the event and
    /// overlapped models add an eventfd (an event object) to each socket.
    pub fn fds_per_conn(self) -> u64 {
        match self {
            Server::Model(Model::Event | Model::Overlapped) => 2,
            _ => 1,
        }
    }
}

pub fn peer_path(cport: &Path, p: Peer) -> PathBuf {
    cport.with_file_name(p.name())
}

/// Every name `--servers` accepts, for the error message.
fn server_names() -> String {
    let mut names: Vec<&str> = Server::all().iter().map(|s| s.name()).collect();
    names.extend(GROUPS);
    names.join(", ")
}

/// `--servers a,b`: the servers named, in the order of [`Server::all`],
/// each once. Group names stand for their members. A server named that
/// cannot run here is refused with the reason; a group's members that
/// cannot are kept, for the plan to skip with a line saying why.
pub fn parse_servers(s: &str) -> Result<Vec<Server>, Usage> {
    let mut wanted = Vec::new();
    for name in s.split(',').map(str::trim) {
        let found: Vec<Server> = match name {
            "" => {
                return Err(Usage(format!(
                    "--servers {s:?}: empty name in the list (expected names separated by \
                     commas: {})",
                    server_names()
                )));
            }
            "models" => Server::models(),
            "port" => Server::ports(),
            "shards" => vec![Server::ShardsUring, Server::ShardsEpoll],
            "peers" => Peer::ALL.map(Server::Peer).to_vec(),
            _ => match Server::by_name(name).or_else(|| Server::elsewhere(name)) {
                Some(server) => {
                    if let Some(why) = server.unavailable() {
                        return Err(Usage(format!("--servers {name}: {why}")));
                    }
                    vec![server]
                }
                None => Vec::new(),
            },
        };
        if found.is_empty() {
            return Err(Usage(format!(
                "unknown server {name:?} in --servers (expected one of: {})",
                server_names()
            )));
        }
        wanted.extend(found);
    }
    Ok(Server::all()
        .into_iter()
        .filter(|s| wanted.contains(s))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[Server]) -> Vec<&'static str> {
        v.iter().map(|s| s.name()).collect()
    }

    #[test]
    fn every_model_is_a_row_port_is_two_and_the_peers_follow() {
        let all = names(&Server::all());
        assert_eq!(all.len(), Model::ALL.len() + 1 + 2 + 3);
        assert!(!all.contains(&"port"));
        for m in Model::ALL.iter().filter(|m| **m != Model::Port) {
            assert!(all.contains(&m.name()), "{m} missing");
        }
        assert_eq!(
            &all[all.len() - 7..],
            [
                "port-uring",
                "port-epoll",
                "shards-uring",
                "shards-epoll",
                "tokio-echo",
                "uring-echo",
                "epoll-echo"
            ]
        );
        let mut sorted = all.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), all.len(), "one name per server");
    }

    #[test]
    fn servers_are_parsed_in_canonical_order_with_groups() {
        let v = parse_servers("uring-echo,port,epoll, blocking,epoll").unwrap();
        assert_eq!(
            names(&v),
            [
                "blocking",
                "epoll",
                "port-uring",
                "port-epoll",
                "uring-echo"
            ]
        );
        assert_eq!(names(&parse_servers("port-epoll").unwrap()), ["port-epoll"]);
        assert_eq!(
            names(&parse_servers("peers").unwrap()),
            ["tokio-echo", "uring-echo", "epoll-echo"]
        );
        assert_eq!(parse_servers("models").unwrap(), Server::models());
    }

    #[test]
    fn unknown_and_empty_servers_are_refused_by_name() {
        let e = parse_servers("epoll,kqueue").unwrap_err().0;
        assert!(e.contains("\"kqueue\"") && e.contains("uring-echo"), "{e}");
        assert!(e.contains("peers"), "{e}");
        assert!(!e.contains('\n'));
        let e = parse_servers("epoll,,poll").unwrap_err().0;
        assert!(e.contains("empty"), "{e}");
        assert!(parse_servers("").is_err());
    }

    #[test]
    fn commands_name_the_model_size_the_port_and_find_the_peers() {
        let cport = Path::new("/t/release/cport");
        let (p, a) = Server::PortUring.command(cport, 1, None);
        let (_, shards) = Server::ShardsEpoll.command(cport, 3, None);
        assert_eq!(
            shards.join(" "),
            "serve --port 0 --backend epoll --shards 3"
        );
        assert_eq!(p, cport);
        assert_eq!(
            a.join(" "),
            "serve --port 0 --model port --backend uring --no-udp --workers 2 --concurrency 1"
        );
        let (_, a) = Server::PortEpoll.command(cport, 2, None);
        assert!(
            a.join(" ").ends_with("--workers 2 --concurrency 2"),
            "{a:?}"
        );
        let (_, a) = Server::PortEpoll.command(cport, 3, None);
        assert!(
            a.join(" ").ends_with("--workers 3 --concurrency 3"),
            "{a:?}"
        );
        let (_, a) = Server::Model(Model::Callback).command(cport, 2, None);
        assert!(
            a.join(" ").ends_with("--model callback --backend auto"),
            "{a:?}"
        );
        let (_, a) = Server::Model(Model::Select).command(cport, 2, None);
        assert!(a.join(" ").ends_with("--model select"), "{a:?}");
        let (p, a) = Server::Peer(Peer::Uring).command(cport, 2, None);
        assert_eq!(p, Path::new("/t/release/uring-echo"));
        assert_eq!(a.join(" "), "--port 0 --threads 2");
    }

    #[test]
    fn a_buffer_size_goes_to_every_server_and_none_by_default() {
        let cport = Path::new("/t/release/cport");
        let models = Model::ALL.into_iter().map(Server::Model);
        for s in models.chain([
            Server::PortUring,
            Server::PortEpoll,
            Server::ShardsUring,
            Server::ShardsEpoll,
            Server::Peer(Peer::Uring),
            Server::Peer(Peer::Epoll),
            Server::Peer(Peer::Tokio),
        ]) {
            let (_, a) = s.command(cport, 1, Some(65536));
            assert!(a.join(" ").ends_with("--buffer-size 65536"), "{s:?}: {a:?}");
            let (_, a) = s.command(cport, 1, None);
            assert!(!a.contains(&"--buffer-size".to_string()), "{s:?}: {a:?}");
        }
    }
}
