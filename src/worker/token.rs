//! The mapping between `mio::Token`s and what they stand for in a worker.
//!
//! Every socket a worker polls is registered under one token. Two are fixed (the
//! listener and the waker); the rest name a slot in one of the worker's two slabs
//! (client connections and backend connections) plus that slot's *generation*.
//! Slab slots are reused as soon as they are freed, so an event or a timer still in
//! flight for a closed connection could otherwise land on the new one; the
//! generation in the token's high 32 bits makes such a stale event miss.
//!
//! Layout of a slot token: `generation << 32 | (key << 1 | side) + 2`.

use mio::Token;

/// The worker's listening socket.
pub const LISTENER: Token = Token(0);
/// The `mio::Waker` other threads use to tell a worker to look at its shared state.
pub const WAKER: Token = Token(1);

const FIXED: usize = 2;

/// What an event's token refers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    Listener,
    Waker,
    /// A client connection: slab key and generation.
    Client {
        key: usize,
        generation: u32,
    },
    /// A backend connection: slab key and generation.
    Backend {
        key: usize,
        generation: u32,
    },
}

/// The token of client connection `key`.
pub fn client(key: usize, generation: u32) -> Token {
    encode(key, 0, generation)
}

/// The token of backend connection `key`.
pub fn backend(key: usize, generation: u32) -> Token {
    encode(key, 1, generation)
}

fn encode(key: usize, side: usize, generation: u32) -> Token {
    debug_assert!(key < (1 << 30), "slab key too large for a token");
    Token(((generation as usize) << 32) | (((key << 1) | side) + FIXED))
}

/// What `token` refers to.
pub fn decode(token: Token) -> Owner {
    match token {
        LISTENER => Owner::Listener,
        WAKER => Owner::Waker,
        Token(raw) => {
            let generation = (raw >> 32) as u32;
            let slot = (raw & 0xffff_ffff) - FIXED;
            let key = slot >> 1;
            if slot & 1 == 0 {
                Owner::Client { key, generation }
            } else {
                Owner::Backend { key, generation }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        for (key, generation) in [(0, 0), (1, 7), (12345, u32::MAX), ((1 << 30) - 1, 1)] {
            assert_eq!(
                decode(client(key, generation)),
                Owner::Client { key, generation }
            );
            assert_eq!(
                decode(backend(key, generation)),
                Owner::Backend { key, generation }
            );
        }
        assert_eq!(decode(LISTENER), Owner::Listener);
        assert_eq!(decode(WAKER), Owner::Waker);
    }

    #[test]
    fn generations_tell_reused_slots_apart() {
        assert_ne!(client(3, 1), client(3, 2));
        assert_ne!(client(3, 1), backend(3, 1));
    }
}
