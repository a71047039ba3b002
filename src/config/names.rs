//! Names of the small enums (variant, MLA path, kernel, mode, storage type, ...): one table per
//! enum gives its `ALL`, `name()`, `Display` and `FromStr`, and on request clap's `ValueEnum`,
//! so a name is written once and means the same in files, on the command line, in JSON and in
//! tables.

use thiserror::Error;

/// An enum whose every value has one lowercase name.
pub trait Named: Copy + Eq + 'static {
    /// What the values are, for errors, e.g. `a variant`.
    const WHAT: &'static str;
    /// Every value, in table order.
    const ALL: &'static [Self];

    /// The value's name.
    fn name(self) -> &'static str;

    /// The value called `name`.
    ///
    /// # Errors
    /// [`UnknownName`], listing the valid names, if no value is called that.
    fn from_name(name: &str) -> Result<Self, UnknownName> {
        Self::ALL
            .iter()
            .copied()
            .find(|v| v.name() == name)
            .ok_or_else(|| UnknownName {
                given: name.to_string(),
                what: Self::WHAT,
                known: Self::ALL
                    .iter()
                    .map(|v| v.name())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}

/// A name that is none of an enum's values.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("`{given}` is not {what} ({known})")]
pub struct UnknownName {
    /// The name given.
    pub given: String,
    /// What was expected ([`Named::WHAT`]).
    pub what: &'static str,
    /// The valid names, comma-separated, in table order.
    pub known: String,
}

/// Implements `ALL` and `name()` (inherent, so callers need no import), [`Named`], `Display`
/// and `FromStr` for an enum from its table of names:
/// `named_enum!(Mode, "a mode", { Prefill => "prefill", Decode => "decode" });`
macro_rules! named_enum {
    ($ty:ident, $what:literal, { $($value:ident => $name:literal),+ $(,)? }) => {
        impl $ty {
            /// Every value, in table order.
            pub const ALL: [$ty; [$($name),+].len()] = [$($ty::$value),+];

            /// The lowercase name used in files, on the command line, in JSON and in tables.
            pub fn name(self) -> &'static str {
                match self {
                    $($ty::$value => $name),+
                }
            }
        }

        impl $crate::config::Named for $ty {
            const WHAT: &'static str = $what;
            const ALL: &'static [Self] = &$ty::ALL;

            fn name(self) -> &'static str {
                $ty::name(self)
            }
        }

        impl ::std::fmt::Display for $ty {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.name())
            }
        }

        impl ::std::str::FromStr for $ty {
            type Err = $crate::config::UnknownName;

            fn from_str(s: &str) -> ::std::result::Result<Self, Self::Err> {
                <$ty as $crate::config::Named>::from_name(s)
            }
        }
    };
}

/// Implements clap's `ValueEnum` for a [`Named`] enum, so a flag parses straight into it and
/// `--help` lists its names.
macro_rules! clap_value_enum {
    ($ty:ident) => {
        impl ::clap::ValueEnum for $ty {
            fn value_variants<'a>() -> &'a [Self] {
                &$ty::ALL
            }

            fn to_possible_value(&self) -> Option<::clap::builder::PossibleValue> {
                Some(::clap::builder::PossibleValue::new(self.name()))
            }
        }
    };
}

pub(crate) use {clap_value_enum, named_enum};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Dtype, Kernel, MlaPath, Mode, Variant};

    /// The serde names (files, JSON) are the table's names, and every name parses back.
    fn check<
        T: Named + serde::Serialize + std::str::FromStr<Err = UnknownName> + std::fmt::Debug,
    >() {
        for &v in T::ALL {
            assert_eq!(
                serde_json::to_string(&v).unwrap(),
                format!("\"{}\"", v.name())
            );
            assert_eq!(v.name().parse::<T>().unwrap(), v);
        }
    }

    #[test]
    fn serde_names_are_the_table_names_and_parse_back() {
        check::<Variant>();
        check::<MlaPath>();
        check::<Kernel>();
        check::<Mode>();
        check::<Dtype>();
    }

    #[test]
    fn an_unknown_name_lists_the_valid_ones() {
        let error = "xla".parse::<Variant>().unwrap_err();
        assert_eq!(
            error.to_string(),
            "`xla` is not a variant (mha, mqa, gqa, mla)"
        );
    }
}
