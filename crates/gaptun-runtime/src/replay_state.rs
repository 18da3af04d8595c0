//! The server's replay state file: every accepted handshake's fingerprint, so that an Initial
//! recorded before a restart gets no answer after it (see `docs/protocol.md`, "Replay cache").
//!
//! Format: the 8-byte magic `gtreplay`, then 40-byte records (server Unix time in ms, u64 BE;
//! the 32-byte fingerprint). New records are appended and synced to disk before the Response
//! that follows them is sent; when the cache drops a generation the file is rewritten with what
//! the cache still holds (to a temporary file, synced, then renamed over), so it stays as small
//! as the cache: the handshake budget times twice the handshake window at most. A torn last
//! record (a crash mid-append) is ignored.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use gaptun_proto::Endpoint;
use gaptun_proto::handshake::ReplayRecord;

/// First bytes of the file.
const MAGIC: &[u8; 8] = b"gtreplay";
/// Bytes per record.
const RECORD_LEN: usize = 40;

/// The open state file.
#[derive(Debug)]
pub(crate) struct ReplayStore {
    path: PathBuf,
    file: File,
}

impl ReplayStore {
    /// Loads `path` into `endpoint` (at server time `unix_time`) if it exists, rewrites it
    /// compacted, and keeps it open for appending. A file that exists but is not a replay state
    /// file is an error: starting without it would silently lose the guarantee.
    pub(crate) fn open(
        path: &Path,
        endpoint: &mut Endpoint,
        unix_time: Duration,
    ) -> io::Result<Self> {
        match fs::read(path) {
            Ok(bytes) => {
                let records = parse(&bytes).ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{} is not a gaptun replay state file", path.display()),
                    )
                })?;
                endpoint.load_replay_state(unix_time, records);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let file = rewrite(path, &endpoint.replay_records())?;
        // What `load` or the first rotation reported is already in the file just written.
        endpoint.take_replay_journal();
        Ok(Self {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Writes what the endpoint accepted since the last call, synced before returning.
    pub(crate) fn persist(&mut self, endpoint: &mut Endpoint) -> io::Result<()> {
        let journal = endpoint.take_replay_journal();
        if journal.rotated {
            self.file = rewrite(&self.path, &endpoint.replay_records())?;
            return Ok(());
        }
        if journal.new.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::with_capacity(journal.new.len() * RECORD_LEN);
        for r in &journal.new {
            encode(r, &mut buf);
        }
        self.file.write_all(&buf)?;
        self.file.sync_data()
    }
}

fn encode(r: &ReplayRecord, out: &mut Vec<u8>) {
    out.extend_from_slice(&r.unix_ms.to_be_bytes());
    out.extend_from_slice(&r.fingerprint);
}

/// The records of a file's contents; `None` without the magic. A partial last record is dropped.
fn parse(bytes: &[u8]) -> Option<Vec<ReplayRecord>> {
    let body = bytes.strip_prefix(MAGIC.as_slice())?;
    Some(
        body.chunks_exact(RECORD_LEN)
            .filter_map(|c| {
                let (ms, fp) = c.split_at(8);
                Some(ReplayRecord {
                    unix_ms: u64::from_be_bytes(ms.try_into().ok()?),
                    fingerprint: fp.try_into().ok()?,
                })
            })
            .collect(),
    )
}

/// Replaces `path` by a file holding `records` (temporary file, sync, rename, sync of the
/// directory), and returns it opened for appending.
fn rewrite(path: &Path, records: &[ReplayRecord]) -> io::Result<File> {
    let mut buf = Vec::with_capacity(MAGIC.len() + records.len() * RECORD_LEN);
    buf.extend_from_slice(MAGIC);
    for r in records {
        encode(r, &mut buf);
    }
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    {
        let mut f = File::create(&tmp)?;
        f.write_all(&buf)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // Makes the rename durable; not every platform can open a directory, and the data is
        // already synced, so a failure here is not fatal.
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    let mut file = OpenOptions::new().append(true).read(true).open(path)?;
    // The append handle must see what was just written (no other writer exists).
    let mut check = Vec::new();
    file.read_to_end(&mut check)?;
    if check.len() != buf.len() {
        return Err(io::Error::other(
            "replay state file changed while being written",
        ));
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_round_trip_and_torn_tail() {
        let records = [
            ReplayRecord {
                unix_ms: 1_700_000_000_000,
                fingerprint: [7; 32],
            },
            ReplayRecord {
                unix_ms: 1,
                fingerprint: [9; 32],
            },
        ];
        let mut bytes = MAGIC.to_vec();
        for r in &records {
            encode(r, &mut bytes);
        }
        assert_eq!(parse(&bytes).as_deref(), Some(&records[..]));
        bytes.extend_from_slice(&[1, 2, 3]);
        assert_eq!(parse(&bytes).as_deref(), Some(&records[..]));
        assert_eq!(parse(b"not ours at all").as_deref(), None);
        assert_eq!(parse(MAGIC).as_deref(), Some(&[][..]));
    }
}
