//! Amounts of tokens with checked arithmetic, currencies, and issued tokens.
//!
//! An [`Amount`] is a non-negative whole number of the token's smallest unit. Arithmetic is
//! checked: nothing overflows, nothing goes negative, and amounts of different tokens never mix
//! (a dollar issued by one bank is not a dollar issued by another: [`Issued`] makes the issuer
//! part of the token).

use core::fmt;
use core::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::identity::PartyAndReference;

/// A kind of token whose amounts can be shown as decimals.
pub trait TokenType: Clone + PartialEq + fmt::Debug {
    /// How many decimal places one whole unit has (2 for USD: 1 USD = 100 units).
    fn fraction_digits(&self) -> u8;
    /// How the token is named after a decimal amount ("USD").
    fn display_name(&self) -> String;
}

/// Why amount arithmetic or parsing failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    /// The result would exceed `u64::MAX` units.
    #[error("amount overflow")]
    Overflow,
    /// The result would be negative.
    #[error("amount would be negative: {have} minus {take}")]
    Negative {
        /// Left-hand quantity.
        have: u64,
        /// Right-hand quantity.
        take: u64,
    },
    /// Amounts of different tokens were combined.
    #[error("cannot combine amounts of different tokens: {left} and {right}")]
    TokenMismatch {
        /// The left token.
        left: String,
        /// The right token.
        right: String,
    },
    /// A decimal that does not parse for this token.
    #[error("invalid amount {text:?}: {reason}")]
    Parse {
        /// The input.
        text: String,
        /// What is wrong.
        reason: &'static str,
    },
}

/// A quantity of a token, in the token's smallest unit.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Amount<T> {
    /// Number of smallest units.
    pub quantity: u64,
    /// What is counted.
    pub token: T,
}

impl<T: TokenType> Amount<T> {
    /// An amount of `quantity` smallest units.
    pub fn new(quantity: u64, token: T) -> Self {
        Amount { quantity, token }
    }

    /// Zero of `token`.
    pub fn zero(token: T) -> Self {
        Amount { quantity: 0, token }
    }

    fn same_token(&self, other: &Self) -> Result<(), AmountError> {
        if self.token == other.token {
            Ok(())
        } else {
            Err(AmountError::TokenMismatch { left: format!("{:?}", self.token), right: format!("{:?}", other.token) })
        }
    }

    /// `self + other`, refusing overflow and different tokens.
    pub fn checked_add(&self, other: &Self) -> Result<Self, AmountError> {
        self.same_token(other)?;
        let quantity = self.quantity.checked_add(other.quantity).ok_or(AmountError::Overflow)?;
        Ok(Amount { quantity, token: self.token.clone() })
    }

    /// `self - other`, refusing negative results and different tokens.
    pub fn checked_sub(&self, other: &Self) -> Result<Self, AmountError> {
        self.same_token(other)?;
        let quantity =
            self.quantity.checked_sub(other.quantity).ok_or(AmountError::Negative { have: self.quantity, take: other.quantity })?;
        Ok(Amount { quantity, token: self.token.clone() })
    }

    /// The sum of `amounts`, all of `token`.
    pub fn sum<'a>(amounts: impl IntoIterator<Item = &'a Self>, token: T) -> Result<Self, AmountError>
    where
        T: 'a,
    {
        amounts.into_iter().try_fold(Amount::zero(token), |acc, a| acc.checked_add(a))
    }

    /// Splits into `parts` amounts that differ by at most one unit and sum to `self`.
    pub fn split_evenly(&self, parts: u32) -> Vec<Self> {
        if parts == 0 {
            return Vec::new();
        }
        let (each, rem) = (self.quantity / u64::from(parts), self.quantity % u64::from(parts));
        (0..u64::from(parts)).map(|i| Amount { quantity: each + u64::from(i < rem), token: self.token.clone() }).collect()
    }

    /// Parses a decimal like `"1000.00"` into units of `token`; more decimals than the token
    /// has, signs, exponents and overflow are refused.
    pub fn parse_decimal(text: &str, token: T) -> Result<Self, AmountError> {
        let err = |reason| AmountError::Parse { text: text.chars().take(40).collect(), reason };
        let digits = u32::from(token.fraction_digits());
        let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
        if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err("expected digits with an optional decimal point, like 1000.00"));
        }
        if text.contains('.') && frac.is_empty() {
            return Err(err("nothing after the decimal point"));
        }
        if frac.len() > digits as usize {
            return Err(err("more decimal places than the token has"));
        }
        let scale = 10u64.checked_pow(digits).ok_or_else(|| err("token has too many decimal places"))?;
        let whole: u64 = whole.parse().map_err(|_| err("too large"))?;
        let frac_units: u64 =
            if frac.is_empty() { 0 } else { frac.parse::<u64>().map_err(|_| err("too large"))? * 10u64.pow(digits - frac.len() as u32) };
        let quantity = whole.checked_mul(scale).and_then(|w| w.checked_add(frac_units)).ok_or_else(|| err("too large"))?;
        Ok(Amount { quantity, token })
    }

    /// The quantity as a decimal string in whole units (`"1000.00"`).
    pub fn to_decimal_string(&self) -> String {
        let digits = u32::from(self.token.fraction_digits());
        if digits == 0 {
            return self.quantity.to_string();
        }
        let scale = 10u64.saturating_pow(digits);
        format!("{}.{:0width$}", self.quantity / scale, self.quantity % scale, width = digits as usize)
    }
}

impl<T: TokenType> fmt::Display for Amount<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.to_decimal_string(), self.token.display_name())
    }
}

/// A currency by ISO 4217 code.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency(String);

impl Currency {
    /// A currency code: three upper-case letters.
    pub fn new(code: &str) -> Result<Currency, AmountError> {
        if code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase()) {
            Ok(Currency(code.to_string()))
        } else {
            Err(AmountError::Parse { text: code.chars().take(10).collect(), reason: "currency must be a 3-letter ISO 4217 code like USD" })
        }
    }
    /// The ISO code.
    pub fn code(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Currency {
    type Error = AmountError;
    fn try_from(s: String) -> Result<Self, AmountError> {
        Currency::new(&s)
    }
}

impl From<Currency> for String {
    fn from(c: Currency) -> String {
        c.0
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TokenType for Currency {
    fn fraction_digits(&self) -> u8 {
        match self.0.as_str() {
            "JPY" | "KRW" | "CLP" | "ISK" | "VND" | "XAF" | "XOF" => 0,
            "BHD" | "KWD" | "OMR" | "JOD" | "TND" | "LYD" | "IQD" => 3,
            _ => 2,
        }
    }
    fn display_name(&self) -> String {
        self.0.clone()
    }
}

impl FromStr for Amount<Currency> {
    type Err = AmountError;
    /// Parses `"1000.00 USD"`.
    fn from_str(s: &str) -> Result<Self, AmountError> {
        let (num, code) = s.trim().rsplit_once(' ').ok_or(AmountError::Parse {
            text: s.chars().take(40).collect(),
            reason: "expected an amount and a currency, like \"1000.00 USD\"",
        })?;
        Amount::parse_decimal(num.trim(), Currency::new(code)?)
    }
}

/// A token made specific to its issuer: tokens from different issuers never mix.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Issued<T> {
    /// Who issued it, and the issuer's reference.
    pub issuer: PartyAndReference,
    /// What was issued.
    pub product: T,
}

impl<T: TokenType> TokenType for Issued<T> {
    fn fraction_digits(&self) -> u8 {
        self.product.fraction_digits()
    }
    fn display_name(&self) -> String {
        format!("{} issued by {}", self.product.display_name(), self.issuer.party)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd(q: u64) -> Amount<Currency> {
        Amount::new(q, Currency::new("USD").unwrap())
    }

    #[test]
    fn arithmetic_is_checked() {
        assert_eq!(usd(5).checked_add(&usd(7)).unwrap(), usd(12));
        assert_eq!(usd(5).checked_sub(&usd(7)), Err(AmountError::Negative { have: 5, take: 7 }));
        assert_eq!(usd(u64::MAX).checked_add(&usd(1)), Err(AmountError::Overflow));
        let eur = Amount::new(1, Currency::new("EUR").unwrap());
        assert!(matches!(usd(1).checked_add(&eur), Err(AmountError::TokenMismatch { .. })));
        assert_eq!(Amount::sum(&[usd(1), usd(2), usd(3)], Currency::new("USD").unwrap()).unwrap(), usd(6));
        let parts = usd(10).split_evenly(3);
        assert_eq!(parts.iter().map(|a| a.quantity).collect::<Vec<_>>(), vec![4, 3, 3]);
    }

    #[test]
    fn parses_and_displays_decimals() {
        let a: Amount<Currency> = "1000.00 USD".parse().unwrap();
        assert_eq!(a, usd(100_000));
        assert_eq!(a.to_string(), "1000.00 USD");
        assert_eq!("12.5 USD".parse::<Amount<Currency>>().unwrap(), usd(1250));
        assert_eq!("7 JPY".parse::<Amount<Currency>>().unwrap().quantity, 7);
        for bad in ["-1.00 USD", "1.001 USD", "1e3 USD", "1. USD", "USD", "1.00 usd", "99999999999999999999 USD", ".5 USD"] {
            assert!(bad.parse::<Amount<Currency>>().is_err(), "{bad}");
        }
    }
}
