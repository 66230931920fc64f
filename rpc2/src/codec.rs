//! The body codec: how every request and reply body is laid out on the wire.
//!
//! Unsigned integers wider than a byte are LEB128 varints, signed ones zigzag
//! varints; byte strings, strings and vectors are a varint length then their
//! items; fixed arrays are raw. Decoding is total: it checks every length
//! against the bytes that remain before it allocates, so a hostile body can
//! neither panic the decoder nor make it allocate more than the body's size.

use bytes::Bytes;

/// Why a body could not be decoded, naming the field where that is known.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("body ends early: {needed} more bytes needed at {field}")]
    UnexpectedEnd { field: &'static str, needed: u64 },
    #[error("varint too long or overflowing at {field}")]
    BadVarint { field: &'static str },
    #[error("invalid value {value} at {field}")]
    Invalid { field: &'static str, value: u64 },
    #[error("{count} bytes left over after the body")]
    TrailingBytes { count: usize },
}

impl DecodeError {
    /// Names the field an error happened in, keeping the innermost name.
    pub fn in_field(self, field: &'static str) -> Self {
        match self {
            Self::UnexpectedEnd { field: "", needed } => Self::UnexpectedEnd { field, needed },
            Self::BadVarint { field: "" } => Self::BadVarint { field },
            Self::Invalid { field: "", value } => Self::Invalid { field, value },
            other => other,
        }
    }
}

/// Appends encoded values to a byte vector.
pub type Writer = Vec<u8>;

/// Reads encoded values from a byte slice, never past its end.
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// Takes the next `n` bytes, or says how many were missing.
    pub fn take(&mut self, n: u64) -> Result<&'a [u8], DecodeError> {
        if n > self.buf.len() as u64 {
            let needed = n - self.buf.len() as u64;
            return Err(DecodeError::UnexpectedEnd { field: "", needed });
        }
        let (head, tail) = self.buf.split_at(n as usize);
        self.buf = tail;
        Ok(head)
    }

    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    pub fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut value = 0u64;
        for i in 0..10 {
            let byte = self.u8()?;
            let bits = u64::from(byte & 0x7f);
            // The tenth byte may carry only the top bit of a u64.
            if i == 9 && bits > 1 {
                return Err(DecodeError::BadVarint { field: "" });
            }
            value |= bits << (7 * i);
            if byte & 0x80 == 0 {
                // A zero final byte after the first means a longer encoding than needed.
                if i > 0 && byte == 0 {
                    return Err(DecodeError::BadVarint { field: "" });
                }
                return Ok(value);
            }
        }
        Err(DecodeError::BadVarint { field: "" })
    }

    /// A length prefix that the remaining bytes could possibly satisfy,
    /// each item taking at least `item_bytes_min` bytes.
    pub fn length(&mut self, item_bytes_min: u64) -> Result<usize, DecodeError> {
        let len = self.varint()?;
        let needed = len.saturating_mul(item_bytes_min.max(1));
        if needed > self.buf.len() as u64 {
            return Err(DecodeError::UnexpectedEnd {
                field: "",
                needed: needed - self.buf.len() as u64,
            });
        }
        Ok(len as usize)
    }
}

pub fn put_varint(w: &mut Writer, mut value: u64) {
    while value >= 0x80 {
        w.push((value as u8) | 0x80);
        value >>= 7;
    }
    w.push(value as u8);
}

pub trait Encode {
    fn encode(&self, w: &mut Writer);
}

pub trait Decode: Sized {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError>;
}

/// Encodes one value into a fresh buffer.
pub fn to_bytes<T: Encode + ?Sized>(value: &T) -> Bytes {
    let mut w = Writer::new();
    value.encode(&mut w);
    Bytes::from(w)
}

/// Decodes one value that must fill `buf` exactly.
pub fn from_bytes<T: Decode>(buf: &[u8]) -> Result<T, DecodeError> {
    let mut r = Reader::new(buf);
    let value = T::decode(&mut r)?;
    match r.remaining() {
        0 => Ok(value),
        count => Err(DecodeError::TrailingBytes { count }),
    }
}

impl Encode for u8 {
    fn encode(&self, w: &mut Writer) {
        w.push(*self);
    }
}

impl Decode for u8 {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.u8()
    }
}

/// An empty body.
impl Encode for () {
    fn encode(&self, _: &mut Writer) {}
}

impl Decode for () {
    fn decode(_: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(())
    }
}

impl Encode for bool {
    fn encode(&self, w: &mut Writer) {
        w.push(u8::from(*self));
    }
}

impl Decode for bool {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        match r.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(DecodeError::Invalid {
                field: "",
                value: value.into(),
            }),
        }
    }
}

macro_rules! varint_unsigned {
    ($($t:ty),*) => {$(
        impl Encode for $t {
            fn encode(&self, w: &mut Writer) {
                put_varint(w, u64::from(*self));
            }
        }
        impl Decode for $t {
            fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
                let value = r.varint()?;
                <$t>::try_from(value).map_err(|_| DecodeError::Invalid { field: "", value })
            }
        }
    )*};
}
varint_unsigned!(u16, u32, u64);

macro_rules! varint_signed {
    ($($t:ty => $u:ty),*) => {$(
        impl Encode for $t {
            fn encode(&self, w: &mut Writer) {
                // Zigzag: small magnitudes of either sign stay short.
                let zigzag = ((*self << 1) ^ (*self >> (<$t>::BITS - 1))) as $u;
                put_varint(w, u64::from(zigzag));
            }
        }
        impl Decode for $t {
            fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
                let value = r.varint()?;
                let zigzag = <$u>::try_from(value)
                    .map_err(|_| DecodeError::Invalid { field: "", value })?;
                Ok(((zigzag >> 1) as $t) ^ -((zigzag & 1) as $t))
            }
        }
    )*};
}
varint_signed!(i32 => u32, i64 => u64);

impl<const N: usize> Encode for [u8; N] {
    fn encode(&self, w: &mut Writer) {
        w.extend_from_slice(self);
    }
}

impl<const N: usize> Decode for [u8; N] {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(r.take(N as u64)?);
        Ok(out)
    }
}

impl Encode for [u8] {
    fn encode(&self, w: &mut Writer) {
        put_varint(w, self.len() as u64);
        w.extend_from_slice(self);
    }
}

impl Encode for Bytes {
    fn encode(&self, w: &mut Writer) {
        self[..].encode(w);
    }
}

impl Decode for Bytes {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let len = r.length(1)?;
        Ok(Bytes::copy_from_slice(r.take(len as u64)?))
    }
}

impl Encode for str {
    fn encode(&self, w: &mut Writer) {
        self.as_bytes().encode(w);
    }
}

impl Encode for String {
    fn encode(&self, w: &mut Writer) {
        self.as_str().encode(w);
    }
}

impl Decode for String {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let len = r.length(1)?;
        let raw = r.take(len as u64)?;
        match std::str::from_utf8(raw) {
            Ok(s) => Ok(s.to_owned()),
            Err(e) => Err(DecodeError::Invalid {
                field: "",
                value: e.valid_up_to() as u64,
            }),
        }
    }
}

/// Vectors of bytes are byte strings; other vectors are a count then items.
impl<T: Encode> Encode for Vec<T> {
    fn encode(&self, w: &mut Writer) {
        put_varint(w, self.len() as u64);
        for item in self {
            item.encode(w);
        }
    }
}

impl<T: Decode> Decode for Vec<T> {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        // Every item takes at least one byte, so the count is bounded by the
        // body; memory is reserved for no more items than the body's bytes
        // could hold in memory, so a large count of wide items cannot ask for
        // far more than the body carries.
        let count = r.length(1)?;
        let wide = size_of::<T>().max(1);
        let mut items = Vec::with_capacity(count.min(r.remaining() / wide + 1));
        for _ in 0..count {
            items.push(T::decode(r)?);
        }
        Ok(items)
    }
}

impl<T: Encode> Encode for Option<T> {
    fn encode(&self, w: &mut Writer) {
        match self {
            None => w.push(0),
            Some(value) => {
                w.push(1);
                value.encode(w);
            }
        }
    }
}

impl<T: Decode> Decode for Option<T> {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        match r.u8()? {
            0 => Ok(None),
            1 => Ok(Some(T::decode(r)?)),
            value => Err(DecodeError::Invalid {
                field: "",
                value: value.into(),
            }),
        }
    }
}

impl<A: Encode, B: Encode> Encode for (A, B) {
    fn encode(&self, w: &mut Writer) {
        self.0.encode(w);
        self.1.encode(w);
    }
}

impl<A: Decode, B: Decode> Decode for (A, B) {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok((A::decode(r)?, B::decode(r)?))
    }
}

/// Declares a struct whose body encoding is its fields in order; a decode
/// error names the struct and field it happened in.
#[macro_export]
macro_rules! codec_struct {
    ($(#[$meta:meta])* $vis:vis struct $name:ident {
        $($(#[$fmeta:meta])* $fvis:vis $field:ident : $ty:ty),* $(,)?
    }) => {
        $(#[$meta])* $vis struct $name { $($(#[$fmeta])* $fvis $field: $ty,)* }
        impl $crate::codec::Encode for $name {
            fn encode(&self, w: &mut $crate::codec::Writer) {
                $( $crate::codec::Encode::encode(&self.$field, w); )*
            }
        }
        impl $crate::codec::Decode for $name {
            fn decode(r: &mut $crate::codec::Reader<'_>) -> ::core::result::Result<Self, $crate::codec::DecodeError> {
                Ok(Self { $(
                    $field: $crate::codec::Decode::decode(r).map_err(|e: $crate::codec::DecodeError| {
                        e.in_field(concat!(stringify!($name), ".", stringify!($field)))
                    })?,
                )* })
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    crate::codec_struct! {
        #[derive(Debug, Clone, PartialEq)]
        struct Sample {
            id: u64,
            delta: i64,
            name: String,
            blob: Bytes,
            list: Vec<u32>,
            maybe: Option<[u8; 4]>,
            flag: bool,
        }
    }

    fn sample() -> impl Strategy<Value = Sample> {
        (
            any::<u64>(),
            any::<i64>(),
            ".{0,20}",
            proptest::collection::vec(any::<u8>(), 0..40),
            proptest::collection::vec(any::<u32>(), 0..20),
            any::<Option<[u8; 4]>>(),
            any::<bool>(),
        )
            .prop_map(|(id, delta, name, blob, list, maybe, flag)| Sample {
                id,
                delta,
                name,
                blob: Bytes::from(blob),
                list,
                maybe,
                flag,
            })
    }

    proptest! {
        #[test]
        fn every_value_round_trips(s in sample()) {
            let bytes = to_bytes(&s);
            prop_assert_eq!(from_bytes::<Sample>(&bytes).unwrap(), s);
        }

        #[test]
        fn every_truncation_is_an_error(s in sample(), cut in any::<prop::sample::Index>()) {
            let bytes = to_bytes(&s);
            let cut = cut.index(bytes.len());
            prop_assert!(from_bytes::<Sample>(&bytes[..cut]).is_err());
        }

        #[test]
        fn arbitrary_bytes_never_panic(raw in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = from_bytes::<Sample>(&raw);
        }
    }

    #[test]
    fn a_huge_count_is_refused_before_allocating() {
        let mut w = Writer::new();
        put_varint(&mut w, u64::MAX);
        let err = from_bytes::<Vec<u64>>(&w).unwrap_err();
        assert!(matches!(err, DecodeError::UnexpectedEnd { .. }), "{err:?}");
    }

    #[test]
    fn overlong_and_overflowing_varints_are_refused() {
        assert!(matches!(
            from_bytes::<u64>(&[0x80, 0x00]),
            Err(DecodeError::BadVarint { .. })
        ));
        let mut eleven = vec![0xff; 10];
        eleven.push(0x01);
        assert!(from_bytes::<u64>(&eleven).is_err());
        let mut top = vec![0xff; 9];
        top.push(0x02);
        assert!(matches!(
            from_bytes::<u64>(&top),
            Err(DecodeError::BadVarint { .. })
        ));
        assert_eq!(from_bytes::<u64>(&to_bytes(&u64::MAX)).unwrap(), u64::MAX);
        assert!(matches!(
            from_bytes::<u16>(&to_bytes(&70_000u32)),
            Err(DecodeError::Invalid { value: 70_000, .. })
        ));
    }

    #[test]
    fn errors_name_the_struct_field() {
        let s = Sample {
            id: 1,
            delta: -1,
            name: "x".into(),
            blob: Bytes::from_static(b"abc"),
            list: vec![],
            maybe: None,
            flag: true,
        };
        let bytes = to_bytes(&s);
        let err = from_bytes::<Sample>(&bytes[..5]).unwrap_err();
        assert_eq!(
            err,
            DecodeError::UnexpectedEnd {
                field: "Sample.blob",
                needed: 3
            }
        );
    }
}
