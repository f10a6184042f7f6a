//! Exchange-rate fixes: the command an oracle signs (white paper "Oracles and tear-offs").
//!
//! A transaction that depends on an exchange rate carries an [`FxFix`] command naming the rate,
//! with the oracle's key among its signers. The oracle is shown a tear-off revealing only its
//! fixes (and their signers) and the time window, checks each rate against its own, and signs
//! the transaction id. The contract that uses the rate (the obligation's settlement in another
//! currency) checks the fix is signed by the oracle its state trusts.

use serde::{Deserialize, Serialize};
use treaty_contract_sdk::treaty_core::{Amount, CommandType, Currency, TokenType};

/// Rates are fixed in parts per million of the quote currency per unit of the base currency.
pub const RATE_SCALE: u64 = 1_000_000;

/// `1 base = rate_ppm / 1,000,000 quote`, as of the transaction's time window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FxFix {
    /// The currency converted from (ISO 4217 code).
    pub base: String,
    /// The currency converted to.
    pub quote: String,
    /// The rate, in millionths.
    pub rate_ppm: u64,
}

impl CommandType for FxFix {
    const TYPE_ID: &'static str = "treaty.finance.FxFix";
}

impl FxFix {
    /// The pair as the oracle names it: `USD/EUR`.
    pub fn pair(&self) -> String {
        format!("{}/{}", self.base, self.quote)
    }

    /// `amount` (of the base currency) in the quote currency at this rate, rounded up to the
    /// quote's smallest unit; `None` if the currencies do not match the fix or it overflows.
    pub fn convert(&self, amount: &Amount<Currency>, quote: &Currency) -> Option<Amount<Currency>> {
        if amount.token.code() != self.base || quote.code() != self.quote {
            return None;
        }
        let (fb, fq) = (u32::from(amount.token.fraction_digits()), u32::from(quote.fraction_digits()));
        // units_q = units_b × rate / 10^6 × 10^(fq − fb), rounded up.
        let mut num = u128::from(amount.quantity).checked_mul(u128::from(self.rate_ppm))?;
        let mut den = u128::from(RATE_SCALE);
        if fq >= fb {
            num = num.checked_mul(10u128.checked_pow(fq - fb)?)?;
        } else {
            den = den.checked_mul(10u128.checked_pow(fb - fq)?)?;
        }
        let units = u64::try_from(num.div_ceil(den)).ok()?;
        Some(Amount::new(units, quote.clone()))
    }
}

/// Parses a decimal rate (`"0.92"`, `"151.5"`) into millionths; at most six decimals.
pub fn parse_rate(text: &str) -> Result<u64, String> {
    let bad = || format!("{text:?} is not a positive decimal rate with at most six decimals");
    let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
    if whole.is_empty()
        || (text.contains('.') && frac.is_empty())
        || frac.len() > 6
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    let whole: u64 = whole.parse().map_err(|_| bad())?;
    let frac: u64 = if frac.is_empty() { 0 } else { format!("{frac:0<6}").parse().map_err(|_| bad())? };
    let ppm = whole.checked_mul(RATE_SCALE).and_then(|w| w.checked_add(frac)).ok_or_else(bad)?;
    if ppm == 0 {
        return Err(bad());
    }
    Ok(ppm)
}

/// Millionths as a decimal rate (`920000` → `"0.92"`).
pub fn format_rate(ppm: u64) -> String {
    let (whole, frac) = (ppm / RATE_SCALE, ppm % RATE_SCALE);
    if frac == 0 {
        return whole.to_string();
    }
    let f = format!("{frac:06}");
    format!("{whole}.{}", f.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_and_print() {
        assert_eq!(parse_rate("0.92"), Ok(920_000));
        assert_eq!(parse_rate("151.5"), Ok(151_500_000));
        assert_eq!(parse_rate("2"), Ok(2_000_000));
        for bad in ["", "0", "0.0", "-1", "1.2345678", "a", "1.", ".5", "1.2.3"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
        assert_eq!(format_rate(920_000), "0.92");
        assert_eq!(format_rate(151_500_000), "151.5");
        assert_eq!(format_rate(2_000_000), "2");
    }

    #[test]
    fn conversion_rounds_up_and_respects_fraction_digits() {
        let usd = Currency::new("USD").unwrap();
        let eur = Currency::new("EUR").unwrap();
        let jpy = Currency::new("JPY").unwrap();
        let fix = FxFix { base: "USD".into(), quote: "EUR".into(), rate_ppm: 920_000 };
        assert_eq!(fix.convert(&Amount::new(10000, usd.clone()), &eur), Some(Amount::new(9200, eur.clone())));
        // 0.01 USD × 0.92 = 0.0092 EUR: rounds up to one cent.
        assert_eq!(fix.convert(&Amount::new(1, usd.clone()), &eur), Some(Amount::new(1, eur.clone())));
        assert_eq!(fix.convert(&Amount::new(1, usd.clone()), &jpy), None, "pair mismatch");
        // USD (2 digits) to JPY (0 digits): 100.00 USD × 151.5 = 15150 JPY.
        let to_yen = FxFix { base: "USD".into(), quote: "JPY".into(), rate_ppm: 151_500_000 };
        assert_eq!(to_yen.convert(&Amount::new(10000, usd.clone()), &jpy), Some(Amount::new(15150, jpy.clone())));
        // JPY to USD: 15150 JPY × 0.0066 = 99.99 USD.
        let to_usd = FxFix { base: "JPY".into(), quote: "USD".into(), rate_ppm: 6_600 };
        assert_eq!(to_usd.convert(&Amount::new(15150, jpy), &usd), Some(Amount::new(9999, usd)));
    }
}
