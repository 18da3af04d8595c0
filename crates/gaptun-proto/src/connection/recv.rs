//! Receiving: authenticating datagrams, processing frames, and following the peer to a new
//! address.

use std::time::Instant;

use super::{Connection, ConnectionError, State, Timer, error_code};
use bytes::Bytes;

use crate::frame::{self, Frame, StreamFrame};
use crate::packet;
use crate::shared::{PathAddr, Side};
use crate::streams::{SLICE_MIN, StreamsError};

/// Ack-eliciting packets at least this long are taken as bulk data, never copied, when
/// estimating the loss rate from arrivals.
const UNCOPIED_MIN_LEN: usize = 1000;

/// Shortest time a partly received datagram waits for its missing pieces, whatever the RTT.
const MIN_REASSEMBLY_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(100);

impl Connection {
    /// A datagram for this connection arrived on path `from` (our carrier, the peer's address).
    pub fn handle_datagram(&mut self, now: Instant, from: PathAddr, data: &mut [u8]) {
        match self.state {
            State::Drained | State::Draining => return,
            State::Handshaking => {
                self.handle_response(now, from, data);
                return;
            }
            State::Established | State::Closing => {}
        }
        let len = data.len() as u64;
        let fec = self.fec_keeps_sealed(data.len());
        let Some(keys) = self.keys.as_mut() else {
            return;
        };
        let largest = self.replay.largest();
        if fec {
            self.fec.receiver.stash(data);
            self.stats.fec_sealed_kept += 1;
        }
        let Ok((pn, payload)) = packet::open(&self.header_key, keys, largest, data) else {
            // Forged, corrupted, or for another key: dropped without a word.
            self.stats.dropped_auth += 1;
            return;
        };
        if !self.replay.is_fresh(pn) {
            self.stats.dropped_replay += 1;
            return;
        }
        if self.side == Side::Server
            && self.confirmed
            && from != self.path.addr
            && !self.accept_from_elsewhere(now, from, pn, len, payload)
        {
            return;
        }
        self.replay.insert(pn);
        if fec {
            self.fec.receiver.commit(pn);
        }
        self.stats.packets_received += 1;
        self.stats.bytes_received += len;
        self.last_received = now;
        self.unanswered_since = None;
        if self.state == State::Closing {
            // Answer a peer that has not seen our CLOSE yet, once per packet it sends.
            self.close_pending = true;
            return;
        }
        self.on_authenticated_from(from, len);
        self.reset_idle_timer(now);
        let non_probing = self.process_payload(now, pn, payload, from);
        if self.state == State::Established && self.side == Side::Server {
            self.maybe_migrate(now, from, pn, non_probing);
        }
        self.open_rebuilt(now);
    }

    /// Client: the datagram should be the server's Response.
    fn handle_response(&mut self, now: Instant, from: PathAddr, data: &[u8]) {
        if !self.paths.contains(from) {
            return;
        }
        let Some(hs) = self.client.as_mut().and_then(|c| c.handshake.as_mut()) else {
            return;
        };
        match hs.try_finish(data) {
            Ok(established) => {
                self.peer_cid = established.peer_cid;
                self.stats.packets_received += 1;
                self.stats.bytes_received += data.len() as u64;
                self.install_keys(now, established.keys, established.peer_params);
                // Failover: the carrier that answered first is the one to start on.
                self.paths.on_established(now, from);
                // Our first packet confirms the handshake to the server; send it even if the
                // application has nothing to say yet.
                self.ping_pending = true;
            }
            Err(_) => {
                // Forged or corrupted: dropped, and the handshake state is kept for the real
                // Response.
                self.stats.dropped_auth += 1;
            }
        }
    }

    /// Bookkeeping for an authenticated packet: handshake confirmation, amplification budget,
    /// migration.
    fn on_authenticated_from(&mut self, from: PathAddr, len: u64) {
        if self.side == Side::Server && !self.confirmed {
            self.confirmed = true;
            self.path.validated = true;
            self.response = None;
            self.response_due = false;
            self.timers.stop(Timer::HandshakeTimeout);
        }
        // Packets from elsewhere were counted by `accept_from_elsewhere` (server); a client
        // does not follow the server to another address.
        if from == self.path.addr {
            self.path.bytes_received += len;
        }
    }

    /// Processes the frames of packet `pn`; returns whether it was non-probing (had a frame
    /// other than PATH_CHALLENGE, PATH_RESPONSE and PADDING).
    pub(super) fn process_payload(
        &mut self,
        now: Instant,
        pn: u64,
        payload: &[u8],
        from: PathAddr,
    ) -> bool {
        let mut ack_eliciting = false;
        let mut non_probing = false;
        // The payload as shared memory, made on the first STREAM frame worth sharing.
        let mut shared = None;
        for frame in frame::iter(payload) {
            let frame = match frame {
                Ok(f) => f,
                Err(e) => {
                    self.stats.dropped_malformed += 1;
                    let error = ConnectionError::ProtocolViolation(e.to_string());
                    self.fail(now, error_code::FRAME_ENCODING, error);
                    return false;
                }
            };
            ack_eliciting |= frame.is_ack_eliciting();
            non_probing |= !matches!(
                frame,
                Frame::Padding | Frame::PathChallenge(_) | Frame::PathResponse(_)
            );
            if let Err(e) = self.process_frame(now, frame, from, payload, &mut shared) {
                self.fail(
                    now,
                    streams_error_code(e),
                    ConnectionError::ProtocolViolation(e.to_string()),
                );
                return false;
            }
            if self.state != State::Established {
                return false;
            }
        }
        let threshold = self.config.ack_eliciting_threshold.max(1);
        let is_new_largest = self.ack.received.max().is_none_or(|l| pn > l);
        let (immediate, skipped) =
            self.ack
                .on_packet(now, pn, ack_eliciting, threshold, self.rtt.get());
        if is_new_largest {
            // Small ack-eliciting packets may be copies of an interactive tail (the peer sends
            // those two or three times), whose arrival says little about single packets; the
            // gap before them still counts.
            let maybe_copied = ack_eliciting && payload.len() < UNCOPIED_MIN_LEN;
            self.loss_rate.observe_arrival(skipped, !maybe_copied);
        }
        if ack_eliciting && !immediate && self.timers.get(Timer::Ack).is_none() {
            self.timers.set(Timer::Ack, now + self.config.max_ack_delay);
        }
        if immediate {
            self.timers.stop(Timer::Ack);
        }
        non_probing
    }

    /// Processes one frame of `payload`. `shared` is the payload copied once into shared
    /// memory, made here on the first STREAM frame long enough to be kept as a slice of it.
    fn process_frame(
        &mut self,
        now: Instant,
        frame: Frame<'_>,
        from: PathAddr,
        payload: &[u8],
        shared: &mut Option<Bytes>,
    ) -> Result<(), StreamsError> {
        match frame {
            Frame::Padding | Frame::Ping => {}
            Frame::Ack(ack) => self.on_ack_frame(now, &ack),
            Frame::Stream(f) => {
                match shareable(&f, payload, shared) {
                    Some((frame, bytes)) => self.streams.on_stream_frame_in(&frame, Some(bytes))?,
                    None => self.streams.on_stream_frame(&f)?,
                }
                self.on_stream_data_received(now, f.fin);
            }
            Frame::ResetStream {
                id,
                error_code,
                final_size,
            } => {
                self.streams.on_reset_stream(id, error_code, final_size)?;
            }
            Frame::StopSending { id, error_code } => {
                self.streams.on_stop_sending(id, error_code)?
            }
            Frame::MaxData(max) => self.streams.on_max_data(max),
            Frame::MaxStreamData { id, max } => self.streams.on_max_stream_data(id, max)?,
            Frame::MaxStreams(count) => self.streams.on_max_streams(count),
            Frame::DataBlocked(_) | Frame::StreamDataBlocked { .. } => {}
            // A client does not answer on a path it has left (port hopping): the server, still
            // sending there, must move to the path the client uses now, which it validates.
            Frame::PathChallenge(_) if self.side == Side::Client && !self.paths.contains(from) => {}
            Frame::PathChallenge(data) => {
                if !self.path_responses.contains(&data) {
                    if self.path_responses.len() >= super::path::MAX_CANDIDATES {
                        self.path_responses.remove(0);
                    }
                    self.path_responses.push(data);
                }
            }
            Frame::PathResponse(data) => self.on_path_response(data),
            Frame::FecParity(parity) => self.on_parity_frame(&parity),
            Frame::Datagram(d) => {
                // Pieces of one datagram leave back to back, at most a window apart: one
                // still missing after three RTTs was lost.
                let timeout = (self.rtt.get() * 3).max(MIN_REASSEMBLY_TIMEOUT);
                match self.datagrams.on_frame(now, &d, timeout) {
                    Ok(true) => self.events.push_back(super::Event::DatagramsReadable),
                    Ok(false) => {}
                    Err(e) => self.fail(
                        now,
                        error_code::PROTOCOL_VIOLATION,
                        ConnectionError::ProtocolViolation(e.to_string()),
                    ),
                }
            }
            Frame::Close(close) => {
                let reason = String::from_utf8_lossy(close.reason).into_owned();
                let error = ConnectionError::ClosedByPeer {
                    code: close.error_code,
                    reason,
                };
                self.drain(now, error);
            }
        }
        Ok(())
    }
}

/// For a STREAM frame whose data is long enough to be kept as a slice (`SLICE_MIN`): the
/// payload in shared memory (copied on first use) and the frame pointing into it.
fn shareable<'s>(
    f: &StreamFrame<'_>,
    payload: &[u8],
    shared: &'s mut Option<Bytes>,
) -> Option<(StreamFrame<'s>, &'s Bytes)> {
    if f.data.len() < SLICE_MIN {
        return None;
    }
    let start = (f.data.as_ptr() as usize).checked_sub(payload.as_ptr() as usize)?;
    let end = start.checked_add(f.data.len())?;
    if end > payload.len() {
        return None;
    }
    let bytes: &'s Bytes = shared.get_or_insert_with(|| Bytes::copy_from_slice(payload));
    let data = bytes.get(start..end)?;
    Some((
        StreamFrame {
            id: f.id,
            offset: f.offset,
            fin: f.fin,
            data,
        },
        bytes,
    ))
}

fn streams_error_code(e: StreamsError) -> u64 {
    match e {
        StreamsError::FlowControl => error_code::FLOW_CONTROL,
        StreamsError::StreamLimit => error_code::STREAM_LIMIT,
        StreamsError::FinalSize => error_code::FINAL_SIZE,
        StreamsError::StreamState => error_code::STREAM_STATE,
        // Holding back memory the window did not grant is a flow-control violation.
        StreamsError::Fragmented => error_code::FLOW_CONTROL,
    }
}
