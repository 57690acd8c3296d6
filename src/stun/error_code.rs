//! STUN and TURN error codes (RFC 8489 §14.8, RFC 8656 §18, RFC 6062 §6.3) with their
//! reason phrases: one type for the server that sends them, the client core that
//! receives them and the `turn-alloc` audit that explains them. A code we do not know
//! is kept as [`ErrorCode::Other`], so a client never loses what a server said.

use std::fmt;

/// An ERROR-CODE value. `code()` is the number on the wire (300-699).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// 300 (RFC 8489 §14.8): use the ALTERNATE-SERVER.
    TryAlternate,
    /// 400
    BadRequest,
    /// 401: a challenge (REALM and NONCE), or credentials that did not verify.
    Unauthenticated,
    /// 403 (RFC 8656 §18): refused by policy.
    Forbidden,
    /// 420
    UnknownAttribute,
    /// 437 (RFC 8656): an allocation exists for this 5-tuple, or none does.
    AllocationMismatch,
    /// 438: the nonce expired; send again with the new one.
    StaleNonce,
    /// 440 (RFC 8656)
    AddressFamilyNotSupported,
    /// 441 (RFC 8656): the credentials differ from the allocation's.
    WrongCredentials,
    /// 442 (RFC 8656)
    UnsupportedTransportProtocol,
    /// 443 (RFC 8656)
    PeerAddressFamilyMismatch,
    /// 486 (RFC 8656)
    AllocationQuotaReached,
    /// 508 (RFC 8656)
    InsufficientCapacity,
    /// 500: the server cannot answer now (e.g. its user database); the client tries again.
    ServerError,
    /// 446 (RFC 6062 §6.3).
    ConnectionAlreadyExists,
    /// 447 (RFC 6062 §6.3).
    ConnectionTimeoutOrFailure,
    /// A code none of the RFCs above define.
    Other(u16),
}

impl ErrorCode {
    /// Every code we know, in the order the relay's counters list them.
    pub const ALL: [ErrorCode; 16] = [
        ErrorCode::TryAlternate,
        ErrorCode::BadRequest,
        ErrorCode::Unauthenticated,
        ErrorCode::Forbidden,
        ErrorCode::UnknownAttribute,
        ErrorCode::AllocationMismatch,
        ErrorCode::StaleNonce,
        ErrorCode::AddressFamilyNotSupported,
        ErrorCode::WrongCredentials,
        ErrorCode::UnsupportedTransportProtocol,
        ErrorCode::PeerAddressFamilyMismatch,
        ErrorCode::AllocationQuotaReached,
        ErrorCode::InsufficientCapacity,
        ErrorCode::ServerError,
        ErrorCode::ConnectionAlreadyExists,
        ErrorCode::ConnectionTimeoutOrFailure,
    ];

    /// The code for a number from the wire.
    pub fn from_code(code: u16) -> ErrorCode {
        ErrorCode::ALL.into_iter().find(|c| c.code() == code).unwrap_or(ErrorCode::Other(code))
    }

    /// The number on the wire.
    pub fn code(self) -> u16 {
        match self {
            ErrorCode::TryAlternate => 300,
            ErrorCode::BadRequest => 400,
            ErrorCode::Unauthenticated => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::UnknownAttribute => 420,
            ErrorCode::AllocationMismatch => 437,
            ErrorCode::StaleNonce => 438,
            ErrorCode::AddressFamilyNotSupported => 440,
            ErrorCode::WrongCredentials => 441,
            ErrorCode::UnsupportedTransportProtocol => 442,
            ErrorCode::PeerAddressFamilyMismatch => 443,
            ErrorCode::AllocationQuotaReached => 486,
            ErrorCode::InsufficientCapacity => 508,
            ErrorCode::ServerError => 500,
            ErrorCode::ConnectionAlreadyExists => 446,
            ErrorCode::ConnectionTimeoutOrFailure => 447,
            ErrorCode::Other(code) => code,
        }
    }

    /// The RFC's reason phrase.
    pub fn reason(self) -> &'static str {
        match self {
            ErrorCode::TryAlternate => "Try Alternate",
            ErrorCode::BadRequest => "Bad Request",
            ErrorCode::Unauthenticated => "Unauthenticated",
            ErrorCode::Forbidden => "Forbidden",
            ErrorCode::UnknownAttribute => "Unknown Attribute",
            ErrorCode::AllocationMismatch => "Allocation Mismatch",
            ErrorCode::StaleNonce => "Stale Nonce",
            ErrorCode::AddressFamilyNotSupported => "Address Family not Supported",
            ErrorCode::WrongCredentials => "Wrong Credentials",
            ErrorCode::UnsupportedTransportProtocol => "Unsupported Transport Protocol",
            ErrorCode::PeerAddressFamilyMismatch => "Peer Address Family Mismatch",
            ErrorCode::AllocationQuotaReached => "Allocation Quota Reached",
            ErrorCode::InsufficientCapacity => "Insufficient Capacity",
            ErrorCode::ServerError => "Server Error",
            ErrorCode::ConnectionAlreadyExists => "Connection Already Exists",
            ErrorCode::ConnectionTimeoutOrFailure => "Connection Timeout or Failure",
            ErrorCode::Other(_) => "Unknown Error",
        }
    }

    /// The position in [`ErrorCode::ALL`] (a counter's slot); an `Other` code has
    /// none and gets `ALL.len()`, one past the end.
    pub fn index(self) -> usize {
        ErrorCode::ALL.iter().position(|c| *c == self).unwrap_or(ErrorCode::ALL.len())
    }
}

/// The number, as on the wire and in JSON (`401`).
impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_code_reads_back_from_its_number_and_has_a_slot() {
        for (i, c) in ErrorCode::ALL.into_iter().enumerate() {
            assert_eq!(ErrorCode::from_code(c.code()), c);
            assert_eq!(c.index(), i);
            assert!((300..700).contains(&c.code()) && !c.reason().is_empty());
        }
    }

    #[test]
    fn an_unknown_code_is_kept_with_no_counter_slot() {
        let c = ErrorCode::from_code(499);
        assert_eq!(c, ErrorCode::Other(499));
        assert_eq!((c.code(), c.to_string()), (499, "499".to_string()));
        assert_eq!(c.index(), ErrorCode::ALL.len());
        assert_eq!(ErrorCode::from_code(438), ErrorCode::StaleNonce);
    }
}
