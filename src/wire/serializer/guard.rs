//! A serde deserializer wrapper that keeps a decoder's memory and stack in
//! proportion to its input, whatever lengths the input claims.
//!
//! A format that prefixes sequences and maps with their length (postcard,
//! MessagePack) passes that length on as a size hint, and serde's
//! collections preallocate from it: up to 1 MiB per collection, from a
//! few bytes of input, at every level of a nested value. A format without
//! a depth limit (postcard) recurses as deep as the input nests, so a
//! deeply nested value overflows the stack and aborts the process. And a
//! format in which some values take no bytes at all (postcard's `()`)
//! lets a claimed length of 2⁶⁴ run a loop that never ends.
//!
//! [`Guarded`] wraps a format's deserializer and, on the way through:
//!
//! - grants size hints from a budget of elements, one per input byte, for
//!   the whole decode: an honest input, in which every element takes at
//!   least a byte, gets every claimed length as its hint and so exact
//!   preallocation; a dishonest one gets hints adding up to no more than
//!   its length, past which collections grow with the elements that
//!   actually arrive;
//! - counts nesting, failing past [`Limits`]' depth;
//! - counts the elements of variable-length sequences and maps, failing
//!   past [`Limits`]' budget. In a format where every element takes at
//!   least one byte the budget is never reached by a valid input; it stops
//!   only elements that take no bytes.
//!
//! A format's own error type may drop the message of a custom error
//! (postcard's does), so the wrapper also records which limit was hit, for
//! [`Limits::explain`] to say.

use std::cell::Cell;
use std::fmt;

use serde::de::{
    self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor,
};

/// What a [`Guarded`] decode may use up, and which limit, if any, stopped it.
#[derive(Debug)]
pub(crate) struct Limits {
    max_depth: usize,
    /// Levels of nesting still allowed below the current one.
    depth_left: Cell<usize>,
    /// Elements that variable-length sequences and maps may still yield.
    elements_left: Cell<usize>,
    /// Elements that size hints may still promise.
    hints_left: Cell<usize>,
    /// The limit that stopped the decode.
    hit: Cell<Option<Hit>>,
}

#[derive(Debug, Clone, Copy)]
enum Hit {
    Depth(usize),
    Elements,
}

impl Limits {
    /// For an input of `input_len` bytes: values may nest `max_depth`
    /// levels deep, variable-length sequences and maps may hold
    /// `max_elements` elements in all, and their size hints may add up to
    /// `input_len` elements.
    pub(crate) fn new(input_len: usize, max_depth: usize, max_elements: usize) -> Self {
        Self {
            max_depth,
            depth_left: Cell::new(max_depth),
            elements_left: Cell::new(max_elements),
            hints_left: Cell::new(input_len),
            hit: Cell::new(None),
        }
    }

    /// What went wrong, for a decode that failed with the format's error
    /// `error`: the limit that stopped it, if one did, else the error.
    pub(crate) fn explain(&self, error: impl fmt::Display) -> String {
        match self.hit.get() {
            Some(Hit::Depth(max)) => format!("the value nests deeper than {max} levels"),
            Some(Hit::Elements) => {
                "the value's sequences and maps hold more elements than its input can".into()
            }
            None => error.to_string(),
        }
    }

    /// Goes one level deeper, until the returned guard is dropped.
    fn enter<E: de::Error>(&self) -> Result<Level<'_>, E> {
        match self.depth_left.get().checked_sub(1) {
            Some(left) => {
                self.depth_left.set(left);
                Ok(Level(&self.depth_left))
            }
            None => {
                self.hit.set(Some(Hit::Depth(self.max_depth)));
                Err(E::custom(format_args!(
                    "nested deeper than {} levels",
                    self.max_depth
                )))
            }
        }
    }

    /// The part of a size hint of `claimed` elements the budget still
    /// covers, taken from it.
    #[inline]
    fn grant(&self, claimed: usize) -> usize {
        let granted = claimed.min(self.hints_left.get());
        self.hints_left.set(self.hints_left.get() - granted);
        granted
    }

    /// Counts one element of a variable-length sequence or map.
    #[inline]
    fn count_element<E: de::Error>(&self) -> Result<(), E> {
        match self.elements_left.get().checked_sub(1) {
            Some(left) => {
                self.elements_left.set(left);
                Ok(())
            }
            None => {
                self.hit.set(Some(Hit::Elements));
                Err(E::custom("more elements than the input can hold"))
            }
        }
    }
}

/// One level of nesting, given back when dropped.
struct Level<'a>(&'a Cell<usize>);

impl Drop for Level<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get() + 1);
    }
}

/// A deserializer (or, inside, a visitor, seed or access) held to [`Limits`].
pub(crate) struct Guarded<'a, T> {
    inner: T,
    limits: &'a Limits,
    /// Whether the sequence or map this wraps (or a visitor will be given)
    /// has a length from the input, so that its elements count.
    counted: bool,
}

impl<'a, T> Guarded<'a, T> {
    /// `deserializer`, held to `limits`.
    pub(crate) fn new(deserializer: T, limits: &'a Limits) -> Self {
        Self::wrap(deserializer, limits, false)
    }

    fn wrap(inner: T, limits: &'a Limits, counted: bool) -> Self {
        Self {
            inner,
            limits,
            counted,
        }
    }
}

/// Deserializer methods, passed on with the visitor wrapped; `counted` for
/// those whose length comes from the input. (Depth is counted where a
/// value opens: in the visitor's `visit_seq`, `visit_map`, `visit_enum`,
/// `visit_some` and `visit_newtype_struct`, so that leaves cost nothing.)
macro_rules! guarded_methods {
    ($($method:ident $(($($arg:ident: $ty:ty),*))? => $counted:expr;)*) => {
        $(
            #[inline]
            fn $method<V: Visitor<'de>>(
                self,
                $($($arg: $ty,)*)?
                visitor: V,
            ) -> Result<V::Value, Self::Error> {
                self.inner
                    .$method($($($arg,)*)? Guarded::wrap(visitor, self.limits, $counted))
            }
        )*
    };
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Guarded<'_, D> {
    type Error = D::Error;

    guarded_methods! {
        deserialize_any => true;
        deserialize_bool => false;
        deserialize_i8 => false;
        deserialize_i16 => false;
        deserialize_i32 => false;
        deserialize_i64 => false;
        deserialize_i128 => false;
        deserialize_u8 => false;
        deserialize_u16 => false;
        deserialize_u32 => false;
        deserialize_u64 => false;
        deserialize_u128 => false;
        deserialize_f32 => false;
        deserialize_f64 => false;
        deserialize_char => false;
        deserialize_str => false;
        deserialize_string => false;
        deserialize_bytes => false;
        deserialize_byte_buf => false;
        deserialize_option => false;
        deserialize_unit => false;
        deserialize_unit_struct(name: &'static str) => false;
        deserialize_newtype_struct(name: &'static str) => false;
        deserialize_seq => true;
        deserialize_tuple(len: usize) => false;
        deserialize_tuple_struct(name: &'static str, len: usize) => false;
        deserialize_map => true;
        deserialize_struct(name: &'static str, fields: &'static [&'static str]) => false;
        deserialize_enum(name: &'static str, variants: &'static [&'static str]) => false;
        deserialize_identifier => false;
        deserialize_ignored_any => true;
    }

    #[inline]
    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Guarded<'_, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.expecting(f)
    }

    #[inline]
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        self.inner.visit_bool(v)
    }
    #[inline]
    fn visit_i8<E: de::Error>(self, v: i8) -> Result<Self::Value, E> {
        self.inner.visit_i8(v)
    }
    #[inline]
    fn visit_i16<E: de::Error>(self, v: i16) -> Result<Self::Value, E> {
        self.inner.visit_i16(v)
    }
    #[inline]
    fn visit_i32<E: de::Error>(self, v: i32) -> Result<Self::Value, E> {
        self.inner.visit_i32(v)
    }
    #[inline]
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        self.inner.visit_i64(v)
    }
    #[inline]
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Self::Value, E> {
        self.inner.visit_i128(v)
    }
    #[inline]
    fn visit_u8<E: de::Error>(self, v: u8) -> Result<Self::Value, E> {
        self.inner.visit_u8(v)
    }
    #[inline]
    fn visit_u16<E: de::Error>(self, v: u16) -> Result<Self::Value, E> {
        self.inner.visit_u16(v)
    }
    #[inline]
    fn visit_u32<E: de::Error>(self, v: u32) -> Result<Self::Value, E> {
        self.inner.visit_u32(v)
    }
    #[inline]
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        self.inner.visit_u64(v)
    }
    #[inline]
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Self::Value, E> {
        self.inner.visit_u128(v)
    }
    #[inline]
    fn visit_f32<E: de::Error>(self, v: f32) -> Result<Self::Value, E> {
        self.inner.visit_f32(v)
    }
    #[inline]
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        self.inner.visit_f64(v)
    }
    #[inline]
    fn visit_char<E: de::Error>(self, v: char) -> Result<Self::Value, E> {
        self.inner.visit_char(v)
    }
    #[inline]
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        self.inner.visit_str(v)
    }
    #[inline]
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        self.inner.visit_borrowed_str(v)
    }
    #[inline]
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        self.inner.visit_string(v)
    }
    #[inline]
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
        self.inner.visit_bytes(v)
    }
    #[inline]
    fn visit_borrowed_bytes<E: de::Error>(self, v: &'de [u8]) -> Result<Self::Value, E> {
        self.inner.visit_borrowed_bytes(v)
    }
    #[inline]
    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Self::Value, E> {
        self.inner.visit_byte_buf(v)
    }
    #[inline]
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        self.inner.visit_none()
    }
    #[inline]
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        self.inner.visit_unit()
    }

    #[inline]
    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        let _level = self.limits.enter::<D::Error>()?;
        self.inner
            .visit_some(Guarded::new(deserializer, self.limits))
    }

    #[inline]
    fn visit_newtype_struct<D: Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        let _level = self.limits.enter::<D::Error>()?;
        self.inner
            .visit_newtype_struct(Guarded::new(deserializer, self.limits))
    }

    #[inline]
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        let _level = self.limits.enter::<A::Error>()?;
        self.inner
            .visit_seq(Guarded::wrap(seq, self.limits, self.counted))
    }

    #[inline]
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        let _level = self.limits.enter::<A::Error>()?;
        self.inner
            .visit_map(Guarded::wrap(map, self.limits, self.counted))
    }

    #[inline]
    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Self::Value, A::Error> {
        let _level = self.limits.enter::<A::Error>()?;
        self.inner.visit_enum(Guarded::new(data, self.limits))
    }
}

/// A seed whose deserializer is held to the limits.
impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Guarded<'_, S> {
    type Value = S::Value;

    #[inline]
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<S::Value, D::Error> {
        self.inner
            .deserialize(Guarded::new(deserializer, self.limits))
    }
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for Guarded<'_, A> {
    type Error = A::Error;

    #[inline]
    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, A::Error> {
        let element = self
            .inner
            .next_element_seed(Guarded::new(seed, self.limits))?;
        if element.is_some() && self.counted {
            self.limits.count_element()?;
        }
        Ok(element)
    }

    /// The claimed length, as far as the budget covers it.
    #[inline]
    fn size_hint(&self) -> Option<usize> {
        self.inner
            .size_hint()
            .map(|claimed| self.limits.grant(claimed))
    }
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Guarded<'_, A> {
    type Error = A::Error;

    #[inline]
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        let key = self.inner.next_key_seed(Guarded::new(seed, self.limits))?;
        if key.is_some() && self.counted {
            self.limits.count_element()?;
        }
        Ok(key)
    }

    #[inline]
    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        self.inner.next_value_seed(Guarded::new(seed, self.limits))
    }

    /// The claimed length, as far as the budget covers it.
    #[inline]
    fn size_hint(&self) -> Option<usize> {
        self.inner
            .size_hint()
            .map(|claimed| self.limits.grant(claimed))
    }
}

impl<'a, 'de, A: EnumAccess<'de>> EnumAccess<'de> for Guarded<'a, A> {
    type Error = A::Error;
    type Variant = Guarded<'a, A::Variant>;

    #[inline]
    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Self::Variant), A::Error> {
        let (value, variant) = self.inner.variant_seed(Guarded::new(seed, self.limits))?;
        Ok((value, Guarded::new(variant, self.limits)))
    }
}

impl<'de, A: VariantAccess<'de>> VariantAccess<'de> for Guarded<'_, A> {
    type Error = A::Error;

    #[inline]
    fn unit_variant(self) -> Result<(), A::Error> {
        self.inner.unit_variant()
    }

    #[inline]
    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, A::Error> {
        self.inner
            .newtype_variant_seed(Guarded::new(seed, self.limits))
    }

    #[inline]
    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, A::Error> {
        self.inner
            .tuple_variant(len, Guarded::new(visitor, self.limits))
    }

    #[inline]
    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        self.inner
            .struct_variant(fields, Guarded::new(visitor, self.limits))
    }
}
