//! Op 9 ("raw") batches: a frame whose body is more frames, back to back.
//! Client sessions and TCP publisher sessions both unpack them here.
//!
//! Pure code. The body was already bounded by the outer frame's limit, and
//! every inner frame is decoded with the same limit; a batch may not nest.
//!
//! ```text
//! op 9 body = frame frame frame ...   (each a whole frame; no op 9 among them)
//! ```

use super::binary::{self, op, DecodeError, Frame};

/// Why a batch was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// The body ends inside a frame.
    #[error("op 9 batch ends inside a frame")]
    Truncated,
    /// An op 9 frame inside the batch.
    #[error("op 9 batch nested in a batch")]
    Nested,
    /// An inner frame breaks a frame rule.
    #[error("op 9 batch: {0}")]
    Frame(DecodeError),
}

/// The inner frames of an op 9 body, in order; stops at the first error.
#[derive(Debug, Clone)]
pub struct Batch<'a> {
    rest: &'a [u8],
    max_body: usize,
}

impl<'a> Batch<'a> {
    /// The frames of `body`, each body at most `max_body` bytes.
    pub fn new(body: &'a [u8], max_body: usize) -> Self {
        Batch { rest: body, max_body }
    }
}

impl<'a> Iterator for Batch<'a> {
    type Item = Result<Frame<'a>, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let item = match binary::decode(self.rest, self.max_body) {
            Ok(Some((f, _))) if f.op == op::RAW => Err(BatchError::Nested),
            Ok(Some((f, n))) => {
                self.rest = &self.rest[n..];
                return Some(Ok(f));
            }
            Ok(None) => Err(BatchError::Truncated),
            Err(e) => Err(BatchError::Frame(e)),
        };
        self.rest = &[];
        Some(item)
    }
}

/// Appends an op 9 batch of `frames` (already encoded) to `dst`.
pub fn encode(dst: &mut bytes::BytesMut, ver: u16, seq: u32, frames: &[u8]) {
    binary::encode(dst, ver, op::RAW, seq, frames);
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    fn frames(ops: &[u32]) -> Vec<u8> {
        let mut b = BytesMut::new();
        for &o in ops {
            binary::encode(&mut b, 1, o, 0, b"xy");
        }
        b.to_vec()
    }

    #[test]
    fn frames_in_order_then_the_first_error_ends_it() {
        let body = frames(&[2, 4, 12]);
        let got: Vec<u32> = Batch::new(&body, 16).map(|f| f.unwrap().op).collect();
        assert_eq!(got, vec![2, 4, 12]);
        assert_eq!(Batch::new(&[], 16).count(), 0);

        let mut cut = frames(&[2, 4]);
        cut.pop();
        let got: Vec<_> = Batch::new(&cut, 16).map(|f| f.map(|f| f.op)).collect();
        assert_eq!(got, vec![Ok(2), Err(BatchError::Truncated)]);

        let nested = frames(&[2, op::RAW, 4]);
        let got: Vec<_> = Batch::new(&nested, 16).map(|f| f.map(|f| f.op)).collect();
        assert_eq!(got, vec![Ok(2), Err(BatchError::Nested)]);

        let big = frames(&[2]);
        let got: Vec<_> = Batch::new(&big, 1).collect();
        assert_eq!(
            got,
            vec![Err(BatchError::Frame(DecodeError::BodyTooLarge { got: 2, max: 1 }))]
        );

        let mut outer = BytesMut::new();
        encode(&mut outer, 1, 5, &body);
        let (f, _) = binary::decode(&outer, 1024).unwrap().unwrap();
        assert_eq!((f.op, f.seq, f.body), (op::RAW, 5, &body[..]));
    }
}
