//! One TCP control connection to a server (async, on the control thread's tokio runtime): connect
//! (optionally from a given local IP), send frames, receive frames through `ccfd_proto::FrameDecoder`.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ccfd_proto::{Frame, FrameDecoder, Hello, NodeId, Role, WireError, PROTOCOL_VERSION};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};

use crate::cli::ServerAddr;

/// Why receiving from the connection failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// The socket failed.
    #[error("control connection I/O error: {0}")]
    Io(#[from] io::Error),
    /// The server closed the connection.
    #[error("server closed the control connection")]
    Closed,
    /// The server sent a malformed frame.
    #[error("malformed frame from the server: {0}")]
    Wire(#[from] WireError),
}

/// A connected control channel.
#[derive(Debug)]
pub struct ControlConn {
    reader: OwnedReadHalf,
    writer: OwnedWriteHalf,
    frames: FrameDecoder,
    read_buf: Vec<u8>,
    write_buf: Vec<u8>,
    local: SocketAddr,
    peer: SocketAddr,
}

impl ControlConn {
    /// Resolves `server` and connects to the first address that answers within `timeout`, binding the
    /// local end to `bind_ip` when given.
    pub async fn connect(
        server: &ServerAddr,
        bind_ip: Option<IpAddr>,
        timeout: Duration,
    ) -> io::Result<Self> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((server.host.as_str(), server.port))
            .await?
            .collect();
        let mut last_err = io::Error::new(io::ErrorKind::NotFound, "no address resolved");
        for addr in addrs {
            if bind_ip.is_some_and(|ip| ip.is_ipv4() != addr.is_ipv4()) {
                continue;
            }
            match tokio::time::timeout(timeout, connect_one(addr, bind_ip)).await {
                Ok(Ok(stream)) => return Self::from_stream(stream),
                Ok(Err(err)) => last_err = err,
                Err(_) => {
                    last_err = io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("connect to {addr} timed out"),
                    )
                }
            }
        }
        Err(last_err)
    }

    /// Wraps an established TCP stream (an accepted or connected peer link).
    pub fn from_stream(stream: TcpStream) -> io::Result<Self> {
        stream.set_nodelay(true)?;
        let local = stream.local_addr()?;
        let peer = stream.peer_addr()?;
        let (reader, writer) = stream.into_split();
        Ok(ControlConn {
            reader,
            writer,
            frames: FrameDecoder::new(),
            read_buf: vec![0; 64 * 1024],
            write_buf: Vec::with_capacity(4096),
            local,
            peer,
        })
    }

    /// The local address of the connection (the client's IP as the server sees it).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The server's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// Sends one frame.
    pub async fn send(&mut self, frame: &Frame) -> io::Result<()> {
        self.write_buf.clear();
        frame
            .encode(&mut self.write_buf)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        self.writer.write_all(&self.write_buf).await
    }

    /// Sends the client's Hello.
    pub async fn send_hello(
        &mut self,
        node_id: NodeId,
        data_addr: Option<SocketAddr>,
    ) -> io::Result<()> {
        self.send_hello_cooperating(node_id, data_addr, None).await
    }

    /// Sends the client's Hello announcing its cooperation listener `control_addr` (if it cooperates).
    pub async fn send_hello_cooperating(
        &mut self,
        node_id: NodeId,
        data_addr: Option<SocketAddr>,
        control_addr: Option<SocketAddr>,
    ) -> io::Result<()> {
        self.send(&Frame::Hello(Hello {
            version: PROTOCOL_VERSION,
            role: Role::Client,
            node_id,
            data_addr,
            control_addr,
        }))
        .await
    }

    /// Receives the next frame. Cancel-safe: a frame is never lost when the future is dropped.
    pub async fn recv(&mut self) -> Result<Frame, ConnError> {
        loop {
            if let Some(frame) = self.frames.next_frame()? {
                return Ok(frame);
            }
            let n = self.reader.read(&mut self.read_buf).await?;
            if n == 0 {
                return Err(ConnError::Closed);
            }
            self.frames.push(&self.read_buf[..n]);
        }
    }

    /// Flushes and half-closes the connection (best effort).
    pub async fn close(mut self) {
        let _ = self.writer.shutdown().await;
    }
}

async fn connect_one(addr: SocketAddr, bind_ip: Option<IpAddr>) -> io::Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = bind_ip {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    socket.connect(addr).await
}
