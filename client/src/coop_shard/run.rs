//! The shard thread's loop (skeleton: commands and exit; streaming follows).

use std::time::Duration;

use ccfd_ring::{Ring, SocketId};
use crossbeam_channel::{Receiver, TryRecvError};

use super::{ServeCommand, ServeSetup};
use crate::error::ClientError;

/// Longest sleep in the ring before the command channel is looked at again.
const MAX_WAIT: Duration = Duration::from_millis(10);

/// Runs the shard until `Exit` or until the command channel disconnects.
pub(super) fn run(
    setup: ServeSetup,
    mut ring: Ring,
    _socket: SocketId,
    commands: Receiver<ServeCommand>,
) -> Result<(), ClientError> {
    let _ = &setup;
    loop {
        loop {
            match commands.try_recv() {
                Ok(ServeCommand::Exit) | Err(TryRecvError::Disconnected) => return Ok(()),
                Ok(command) => tracing::debug!(?command, "cooperation command"),
                Err(TryRecvError::Empty) => break,
            }
        }
        if let Err(error) = ring.wait(Some(MAX_WAIT)) {
            tracing::warn!(%error, "cooperation shard: ring wait failed");
            std::thread::sleep(Duration::from_millis(1));
        }
        let _ = ring.process(64, |_| {});
    }
}
