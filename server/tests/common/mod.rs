//! Helpers shared by the server's socket tests: a served root, a server on a 127.0.0.x address, a raw
//! control connection, and the progress reports a receiver sends.
#![allow(dead_code)] // each test binary uses a subset

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use ccfd_proto::{
    ErrorCode, FileMeta, Frame, FrameDecoder, Hello, NodeId, ReceiverStats, Role, SessionMeta,
    PROTOCOL_VERSION,
};
use ccfd_server::config::Settings;
use ccfd_server::Server;

/// Segment size of the test servers (`start`).
pub const SEGMENT: u64 = 128 << 10;

/// `len` pseudo-random bytes from `seed` (xorshift).
pub fn patterned(len: usize, seed: u8) -> Vec<u8> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ u64::from(seed);
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// A root with `a.bin` (3 segments of at most 128 KiB), `tiny` (1 byte), `empty`, a symlink out and a
/// file outside the root.
pub fn root_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("a.bin"), patterned(300_000, 7)).unwrap();
    std::fs::write(root.join("tiny"), b"x").unwrap();
    std::fs::write(root.join("empty"), b"").unwrap();
    std::fs::write(dir.path().join("secret"), b"secret").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", root.join("passwd")).unwrap();
    std::os::unix::fs::symlink(dir.path().join("secret"), root.join("secret")).unwrap();
    dir
}

/// A server (one shard, `SEGMENT`-byte segments) serving `dir/root` on `ip`, after `configure`.
pub fn start(dir: &Path, ip: &str, udp_base: u16, configure: impl FnOnce(&mut Settings)) -> Server {
    let mut settings = Settings::with_root(dir.join("root"));
    settings.listen = format!("{ip}:0").parse().unwrap();
    settings.udp_base = udp_base;
    settings.shards = 1;
    settings.coding.segment_size = SEGMENT;
    settings.limits.max_sessions = 16;
    configure(&mut settings);
    Server::start(&settings).expect("server starts")
}

/// A port base unlikely to collide between concurrent test binaries.
pub fn udp_base(offset: u16) -> u16 {
    20_000 + (std::process::id() % 2_000) as u16 * 16 + offset
}

/// A control connection speaking frames.
pub struct Ctl {
    /// The TCP stream.
    pub stream: TcpStream,
    decoder: FrameDecoder,
}

impl Ctl {
    /// Connects (10 s read timeout).
    pub fn connect(addr: SocketAddr) -> Ctl {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Ctl {
            stream,
            decoder: FrameDecoder::new(),
        }
    }

    /// Sends one frame.
    pub fn send(&mut self, frame: &Frame) {
        self.stream.write_all(&frame.to_bytes().unwrap()).unwrap();
    }

    /// The next frame, or `None` when the server closed the connection.
    pub fn recv(&mut self) -> Option<Frame> {
        let mut buf = [0u8; 65536];
        loop {
            if let Some(frame) = self
                .decoder
                .next_frame()
                .expect("server sends valid frames")
            {
                return Some(frame);
            }
            match self.stream.read(&mut buf) {
                Ok(0) => return None,
                Ok(n) => self.decoder.push(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    /// Sends `frame` and returns the reply.
    pub fn request(&mut self, frame: &Frame) -> Frame {
        self.send(frame);
        self.recv().expect("a reply")
    }

    /// Says Hello as client `node` receiving on `data_addr` (not cooperating: no listener announced).
    pub fn hello(&mut self, node: u64, data_addr: Option<SocketAddr>) {
        self.hello_with(node, data_addr, None);
    }

    /// Says Hello as a cooperating client `node` (announcing a listener on its data IP, port 9: the
    /// server only lists it to peers).
    pub fn hello_cooperating(&mut self, node: u64, data_addr: SocketAddr) {
        let listener = SocketAddr::new(data_addr.ip(), 9);
        self.hello_with(node, Some(data_addr), Some(listener));
    }

    fn hello_with(
        &mut self,
        node: u64,
        data_addr: Option<SocketAddr>,
        control_addr: Option<SocketAddr>,
    ) {
        let reply = self.request(&Frame::Hello(Hello {
            version: PROTOCOL_VERSION,
            role: Role::Client,
            node_id: NodeId(node),
            data_addr,
            control_addr,
        }));
        assert!(
            matches!(
                reply,
                Frame::Hello(Hello {
                    role: Role::Server,
                    ..
                })
            ),
            "{reply:?}"
        );
    }

    /// The meta of file `name`, or the error reply.
    pub fn meta(&mut self, name: &str) -> Result<FileMeta, (ErrorCode, String)> {
        match self.request(&Frame::FileMetaRequest { name: name.into() }) {
            Frame::FileMeta(meta) => Ok(meta),
            Frame::Error { code, message } => Err((code, message)),
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// The code of an error frame.
pub fn error_code(frame: &Frame) -> Option<ErrorCode> {
    match frame {
        Frame::Error { code, .. } => Some(*code),
        _ => None,
    }
}

/// Requests a segment to be sent to `receive`; panics unless a session meta comes back.
pub fn request_segment(
    ctl: &mut Ctl,
    name: &str,
    segment: u32,
    receive: SocketAddr,
) -> SessionMeta {
    match ctl.request(&Frame::RequestSegment {
        name: name.into(),
        segment,
        receive_addr: receive,
    }) {
        Frame::SessionMeta(meta) => meta,
        other => panic!("{other:?}"),
    }
}

/// Sends a progress heartbeat (packets received, rank) when 20 ms have passed since the last one,
/// as a client does while receiving.
pub fn report_progress(
    ctl: &mut Ctl,
    meta: &SessionMeta,
    last: &mut Instant,
    received_packets: u64,
    rank: u32,
) {
    if last.elapsed() >= Duration::from_millis(20) {
        *last = Instant::now();
        ctl.send(&Frame::Heartbeat {
            session: meta.session,
            stats: ReceiverStats {
                received_packets,
                decoded_rank: rank,
                ..ReceiverStats::default()
            },
        });
    }
}
