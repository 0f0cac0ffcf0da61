//! Keyframe requests (PLI, FIR) from a viewer's browser, handed to the
//! viewer's task: webrtc-rs ends inbound RTCP at its interceptor chain
//! unless an interceptor marks a packet for the application, and none of
//! its default ones marks keyframe requests.
//!
//! The viewer answers a request from the room's GoP window (it starts again
//! at the current GoP's keyframe); the publisher is never asked.

use std::collections::VecDeque;
use std::time::Instant;

use rtc::interceptor::{Attribute, Interceptor, Packet, StreamInfo, TaggedPacket};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::sansio::Protocol;
use rtc::shared::error::Error;

/// Lets PLI and FIR through to the application; everything else is left to
/// the interceptors before it. Registered last in the chain.
#[derive(Default)]
pub(crate) struct KeyframeRequests {
    inbound: VecDeque<TaggedPacket>,
    outbound: VecDeque<TaggedPacket>,
}

/// Whether `p` asks for a keyframe.
pub(crate) fn asks_for_keyframe(p: &dyn rtc::rtcp::Packet) -> bool {
    let any = p.as_any();
    any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>()
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for KeyframeRequests {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Error> {
        if let Packet::Rtcp(packets) = &mut msg.message.packet {
            packets.retain(|p| asks_for_keyframe(p.as_ref()));
            if packets.is_empty() {
                // Reports and NACKs: the interceptors before this one have used them.
                return Ok(());
            }
            msg.message.add(Attribute::DeliverToApplication);
        }
        self.inbound.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<TaggedPacket> {
        self.inbound.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Error> {
        self.outbound.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<TaggedPacket> {
        self.outbound.pop_front()
    }
}

impl Interceptor for KeyframeRequests {
    fn bind_local_stream(&mut self, _: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _: &StreamInfo) {}
}
