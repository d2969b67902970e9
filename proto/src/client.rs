//! A blocking client for the broker's Unix socket: one request at a time,
//! descriptors collected with each reply.

use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::Path;

use serde::de::DeserializeOwned;

use crate::error::WireError;
use crate::frame;
use crate::message::{Op, Reply, Request};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The broker answered with an error.
    #[error("{}", .0.message)]
    Wire(WireError),
    /// The broker's answer did not make sense.
    #[error("protocol error: {0}")]
    Protocol(String),
}

pub struct Client {
    stream: UnixStream,
    reader: frame::FrameReader,
    next_tag: u64,
    /// The tag of the stream this connection is reading, if any.
    stream_tag: Option<u64>,
}

impl Client {
    pub fn connect(socket: &Path) -> io::Result<Client> {
        Ok(Client {
            stream: UnixStream::connect(socket)?,
            reader: frame::FrameReader::default(),
            next_tag: 1,
            stream_tag: None,
        })
    }

    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// Sends raw bytes; for tests of malformed input.
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Reads one reply frame.
    pub fn read_reply(&mut self) -> Result<(Reply, Vec<OwnedFd>), ClientError> {
        let (payload, fds) = self.reader.read(&self.stream, crate::MAX_REPLY)?;
        let reply: Reply =
            serde_json::from_slice(&payload).map_err(|e| ClientError::Protocol(e.to_string()))?;
        if reply.fds != fds.len() {
            return Err(ClientError::Protocol(format!(
                "reply announced {} descriptors but {} arrived",
                reply.fds,
                fds.len()
            )));
        }
        Ok((reply, fds))
    }

    /// Sends `op` and returns its result and descriptors, or the broker's
    /// error.
    pub fn call(&mut self, op: Op) -> Result<(serde_json::Value, Vec<OwnedFd>), ClientError> {
        self.call_as(op)
    }

    /// `call`, with the result decoded into `T`.
    pub fn call_as<T: DeserializeOwned>(
        &mut self,
        op: Op,
    ) -> Result<(T, Vec<OwnedFd>), ClientError> {
        let tag = self.send(op)?;
        let (reply, fds) = self.read_reply()?;
        Self::check_tag(&reply, tag)?;
        Ok((Self::result_of(reply)?, fds))
    }

    fn send(&mut self, op: Op) -> Result<u64, ClientError> {
        let tag = self.next_tag;
        self.next_tag += 1;
        let req = Request { tag: Some(tag), op };
        self.stream.write_all(&frame::encode(&req.to_json()))?;
        Ok(tag)
    }

    fn result_of<T: DeserializeOwned>(reply: Reply) -> Result<T, ClientError> {
        match (reply.ok, reply.result, reply.error) {
            (true, Some(result), _) => decode(&result),
            (false, _, Some(e)) => Err(ClientError::Wire(e)),
            _ => Err(ClientError::Protocol(
                "reply has neither result nor error".into(),
            )),
        }
    }

    /// Sends `op`, which opens a stream, and returns its first result. Read
    /// the stream's items with [`Client::next_item`] until it returns
    /// `Ok(None)`; until then this connection carries nothing else.
    pub fn open_stream(&mut self, op: Op) -> Result<serde_json::Value, ClientError> {
        let tag = self.send(op)?;
        let (reply, _) = self.read_reply()?;
        self.stream_tag = Some(tag).filter(|_| reply.more);
        Self::check_tag(&reply, tag)?;
        Self::result_of(reply)
    }

    /// The next item of the open stream; `Ok(None)` when it ended normally,
    /// `Err(Wire)` when it ended with an error (`lagged`, say).
    pub fn next_item(&mut self) -> Result<Option<serde_json::Value>, ClientError> {
        let Some(tag) = self.stream_tag else {
            return Ok(None);
        };
        let (reply, _) = self.read_reply()?;
        Self::check_tag(&reply, tag)?;
        if !reply.more {
            self.stream_tag = None;
            return match reply.error {
                Some(e) => Err(ClientError::Wire(e)),
                None => Ok(None),
            };
        }
        match reply.item {
            Some(item) => decode(&item).map(Some),
            None => Err(ClientError::Protocol("stream frame without an item".into())),
        }
    }

    fn check_tag(reply: &Reply, tag: u64) -> Result<(), ClientError> {
        // An untagged error is the broker refusing a frame it could not
        // read the tag of (too long, not JSON): it is this request's answer.
        if let (None, false, Some(e)) = (reply.tag, reply.ok, &reply.error) {
            return Err(ClientError::Wire(e.clone()));
        }
        if reply.tag != Some(tag) {
            return Err(ClientError::Protocol(format!(
                "reply tag {:?} does not match request tag {tag}",
                reply.tag
            )));
        }
        Ok(())
    }
}

fn decode<T: DeserializeOwned>(json: &serde_json::value::RawValue) -> Result<T, ClientError> {
    serde_json::from_str(json.get()).map_err(|e| ClientError::Protocol(e.to_string()))
}
