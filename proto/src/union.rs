//! Codecs for enums: a tag byte, then the variant's payload.

/// Declares an enum of fieldless variants, each a tag byte on the wire.
macro_rules! codec_tags {
    ($(#[$meta:meta])* $vis:vis enum $name:ident {
        $($(#[$vmeta:meta])* $variant:ident = $tag:literal),* $(,)?
    }) => {
        $(#[$meta])*
        #[repr(u8)]
        $vis enum $name { $($(#[$vmeta])* $variant = $tag),* }
        impl coda_rpc2::codec::Encode for $name {
            fn encode(&self, w: &mut coda_rpc2::codec::Writer) {
                w.push(*self as u8);
            }
        }
        impl coda_rpc2::codec::Decode for $name {
            fn decode(
                r: &mut coda_rpc2::codec::Reader<'_>,
            ) -> Result<Self, coda_rpc2::codec::DecodeError> {
                match r.u8()? {
                    $($tag => Ok(Self::$variant),)*
                    value => Err(coda_rpc2::codec::DecodeError::Invalid {
                        field: stringify!($name),
                        value: u64::from(value),
                    }),
                }
            }
        }
    };
}

/// Declares an enum whose variants each carry one payload; on the wire a tag
/// byte, then the payload. A decode error names the variant.
macro_rules! codec_union {
    ($(#[$meta:meta])* $vis:vis enum $name:ident {
        $($(#[$vmeta:meta])* $variant:ident($ty:ty) = $tag:literal),* $(,)?
    }) => {
        $(#[$meta])*
        $vis enum $name { $($(#[$vmeta])* $variant($ty)),* }
        impl coda_rpc2::codec::Encode for $name {
            fn encode(&self, w: &mut coda_rpc2::codec::Writer) {
                match self {
                    $(Self::$variant(v) => {
                        w.push($tag);
                        coda_rpc2::codec::Encode::encode(v, w);
                    })*
                }
            }
        }
        impl coda_rpc2::codec::Decode for $name {
            fn decode(
                r: &mut coda_rpc2::codec::Reader<'_>,
            ) -> Result<Self, coda_rpc2::codec::DecodeError> {
                match r.u8()? {
                    $($tag => coda_rpc2::codec::Decode::decode(r)
                        .map(Self::$variant)
                        .map_err(|e: coda_rpc2::codec::DecodeError| {
                            e.in_field(concat!(stringify!($name), "::", stringify!($variant)))
                        }),)*
                    value => Err(coda_rpc2::codec::DecodeError::Invalid {
                        field: stringify!($name),
                        value: u64::from(value),
                    }),
                }
            }
        }
    };
}
