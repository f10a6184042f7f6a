//! Identities: X.500 legal names, parties and anonymous parties.
//!
//! Every identity on a Treaty network is an X.500 name (organisation, locality and country
//! required; organisational unit, common name and state optional). Names are shown to people
//! who decide whom to trade with, so characters that could mislead a reader — quotes, control
//! and invisible formatting characters, leading, trailing or doubled spaces, X.500 separator
//! characters — are refused (white paper "Identity substitution").

use core::fmt;
use core::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::crypto::PublicKey;

/// Why a string is not an acceptable X.500 name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// A required attribute (O, L or C) is missing.
    #[error("X.500 name is missing required attribute {0} (O, L and C are required)")]
    Missing(&'static str),
    /// An attribute other than CN, OU, O, L, ST, C.
    #[error("X.500 name has unsupported attribute {0:?} (allowed: CN, OU, O, L, ST, C)")]
    UnknownAttribute(String),
    /// An attribute given twice.
    #[error("X.500 name gives attribute {0} twice")]
    Duplicate(&'static str),
    /// A part that is not `KEY=value`.
    #[error("X.500 name part {0:?} is not of the form KEY=value")]
    Syntax(String),
    /// A value that is too short or too long.
    #[error("X.500 attribute {attr} must be {min} to {max} characters, got {len}")]
    Length {
        /// The attribute.
        attr: &'static str,
        /// Minimum length.
        min: usize,
        /// Maximum length.
        max: usize,
        /// Actual length.
        len: usize,
    },
    /// A character that could mislead a reader.
    #[error("X.500 attribute {attr} contains a forbidden character {ch:?} ({why})")]
    ForbiddenChar {
        /// The attribute.
        attr: &'static str,
        /// The character.
        ch: char,
        /// Which rule it breaks.
        why: &'static str,
    },
    /// Whitespace at either end, or two spaces in a row.
    #[error("X.500 attribute {0} has leading, trailing or repeated spaces")]
    Spacing(&'static str),
    /// A country code that is not ISO 3166-1 alpha-2.
    #[error("X.500 country {0:?} is not an ISO 3166-1 alpha-2 code (e.g. GB, US, CH)")]
    Country(String),
}

/// An X.500 distinguished name as used for legal identities.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "X500NameRepr")]
pub struct X500Name {
    common_name: Option<String>,
    organisation_unit: Option<String>,
    organisation: String,
    locality: String,
    state: Option<String>,
    country: String,
}

#[derive(Deserialize)]
struct X500NameRepr {
    common_name: Option<String>,
    organisation_unit: Option<String>,
    organisation: String,
    locality: String,
    state: Option<String>,
    country: String,
}

impl TryFrom<X500NameRepr> for X500Name {
    type Error = NameError;
    fn try_from(r: X500NameRepr) -> Result<Self, NameError> {
        X500Name::new(r.common_name, r.organisation_unit, r.organisation, r.locality, r.state, r.country)
    }
}

/// ISO 3166-1 alpha-2 codes, sorted (binary-searched).
const ISO_3166_ALPHA2: [[u8; 2]; 249] = [
    *b"AD", *b"AE", *b"AF", *b"AG", *b"AI", *b"AL", *b"AM", *b"AO", *b"AQ", *b"AR", *b"AS", *b"AT", *b"AU", *b"AW", *b"AX", *b"AZ", *b"BA",
    *b"BB", *b"BD", *b"BE", *b"BF", *b"BG", *b"BH", *b"BI", *b"BJ", *b"BL", *b"BM", *b"BN", *b"BO", *b"BQ", *b"BR", *b"BS", *b"BT", *b"BV",
    *b"BW", *b"BY", *b"BZ", *b"CA", *b"CC", *b"CD", *b"CF", *b"CG", *b"CH", *b"CI", *b"CK", *b"CL", *b"CM", *b"CN", *b"CO", *b"CR", *b"CU",
    *b"CV", *b"CW", *b"CX", *b"CY", *b"CZ", *b"DE", *b"DJ", *b"DK", *b"DM", *b"DO", *b"DZ", *b"EC", *b"EE", *b"EG", *b"EH", *b"ER", *b"ES",
    *b"ET", *b"FI", *b"FJ", *b"FK", *b"FM", *b"FO", *b"FR", *b"GA", *b"GB", *b"GD", *b"GE", *b"GF", *b"GG", *b"GH", *b"GI", *b"GL", *b"GM",
    *b"GN", *b"GP", *b"GQ", *b"GR", *b"GS", *b"GT", *b"GU", *b"GW", *b"GY", *b"HK", *b"HM", *b"HN", *b"HR", *b"HT", *b"HU", *b"ID", *b"IE",
    *b"IL", *b"IM", *b"IN", *b"IO", *b"IQ", *b"IR", *b"IS", *b"IT", *b"JE", *b"JM", *b"JO", *b"JP", *b"KE", *b"KG", *b"KH", *b"KI", *b"KM",
    *b"KN", *b"KP", *b"KR", *b"KW", *b"KY", *b"KZ", *b"LA", *b"LB", *b"LC", *b"LI", *b"LK", *b"LR", *b"LS", *b"LT", *b"LU", *b"LV", *b"LY",
    *b"MA", *b"MC", *b"MD", *b"ME", *b"MF", *b"MG", *b"MH", *b"MK", *b"ML", *b"MM", *b"MN", *b"MO", *b"MP", *b"MQ", *b"MR", *b"MS", *b"MT",
    *b"MU", *b"MV", *b"MW", *b"MX", *b"MY", *b"MZ", *b"NA", *b"NC", *b"NE", *b"NF", *b"NG", *b"NI", *b"NL", *b"NO", *b"NP", *b"NR", *b"NU",
    *b"NZ", *b"OM", *b"PA", *b"PE", *b"PF", *b"PG", *b"PH", *b"PK", *b"PL", *b"PM", *b"PN", *b"PR", *b"PS", *b"PT", *b"PW", *b"PY", *b"QA",
    *b"RE", *b"RO", *b"RS", *b"RU", *b"RW", *b"SA", *b"SB", *b"SC", *b"SD", *b"SE", *b"SG", *b"SH", *b"SI", *b"SJ", *b"SK", *b"SL", *b"SM",
    *b"SN", *b"SO", *b"SR", *b"SS", *b"ST", *b"SV", *b"SX", *b"SY", *b"SZ", *b"TC", *b"TD", *b"TF", *b"TG", *b"TH", *b"TJ", *b"TK", *b"TL",
    *b"TM", *b"TN", *b"TO", *b"TR", *b"TT", *b"TV", *b"TW", *b"TZ", *b"UA", *b"UG", *b"UM", *b"US", *b"UY", *b"UZ", *b"VA", *b"VC", *b"VE",
    *b"VG", *b"VI", *b"VN", *b"VU", *b"WF", *b"WS", *b"YE", *b"YT", *b"ZA", *b"ZM", *b"ZW",
];

fn forbidden(ch: char) -> Option<&'static str> {
    Some(match ch {
        c if c.is_control() => "control character",
        '"' | '\'' | '`' | '\u{2018}'..='\u{201F}' | '\u{00AB}' | '\u{00BB}' | '\u{2039}' | '\u{203A}' => "quote mark",
        ',' | '=' | '+' | ';' | '<' | '>' | '#' | '\\' | '$' => "X.500 separator or escape character",
        '\u{00AD}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}' => {
            "invisible formatting character"
        }
        c if c.is_whitespace() && c != ' ' => "whitespace other than a plain space",
        _ => return None,
    })
}

/// Checks one attribute value in a single pass (names are decoded on every transaction, so
/// this is on the hot path of verification, inside contracts too).
fn check_value(attr: &'static str, v: &str, min: usize, max: usize) -> Result<(), NameError> {
    let mut len = 0usize;
    let mut prev_space = false;
    for ch in v.chars() {
        len += 1;
        let space = ch == ' ';
        if space && (prev_space || len == 1) {
            return Err(NameError::Spacing(attr));
        }
        prev_space = space;
        // Printable ASCII other than the listed specials needs no further checks.
        let plain_ascii =
            ch.is_ascii_alphanumeric() || matches!(ch, ' ' | '.' | '-' | '&' | '(' | ')' | '/' | ':' | '_' | '@' | '!' | '?' | '*' | '%');
        if !plain_ascii && let Some(why) = forbidden(ch) {
            return Err(NameError::ForbiddenChar { attr, ch, why });
        }
    }
    if prev_space {
        return Err(NameError::Spacing(attr));
    }
    if len < min || len > max {
        return Err(NameError::Length { attr, min, max, len });
    }
    Ok(())
}

impl X500Name {
    /// Builds a name, checking every rule.
    pub fn new(
        common_name: Option<String>,
        organisation_unit: Option<String>,
        organisation: String,
        locality: String,
        state: Option<String>,
        country: String,
    ) -> Result<X500Name, NameError> {
        if let Some(cn) = &common_name {
            check_value("CN", cn, 1, 64)?;
        }
        if let Some(ou) = &organisation_unit {
            check_value("OU", ou, 1, 64)?;
        }
        check_value("O", &organisation, 2, 128)?;
        check_value("L", &locality, 2, 64)?;
        if let Some(st) = &state {
            check_value("ST", st, 1, 64)?;
        }
        let code: Option<[u8; 2]> = country.as_bytes().try_into().ok();
        if code.is_none_or(|c| ISO_3166_ALPHA2.binary_search(&c).is_err()) {
            return Err(NameError::Country(country));
        }
        Ok(X500Name { common_name, organisation_unit, organisation, locality, state, country })
    }

    /// The organisation (O).
    pub fn organisation(&self) -> &str {
        &self.organisation
    }
    /// The locality (L).
    pub fn locality(&self) -> &str {
        &self.locality
    }
    /// The country (C), ISO 3166-1 alpha-2.
    pub fn country(&self) -> &str {
        &self.country
    }
    /// The organisational unit (OU), if any.
    pub fn organisation_unit(&self) -> Option<&str> {
        self.organisation_unit.as_deref()
    }
    /// The common name (CN), if any.
    pub fn common_name(&self) -> Option<&str> {
        self.common_name.as_deref()
    }
    /// The state or province (ST), if any.
    pub fn state(&self) -> Option<&str> {
        self.state.as_deref()
    }
}

impl FromStr for X500Name {
    type Err = NameError;
    /// Parses `O=Alice,L=London,C=GB` (spaces after commas allowed; any attribute order).
    fn from_str(s: &str) -> Result<Self, NameError> {
        let (mut cn, mut ou, mut o, mut l, mut st, mut c) = (None, None, None, None, None, None);
        for part in s.split(',') {
            let part = part.strip_prefix(' ').unwrap_or(part);
            let (k, v) = part.split_once('=').ok_or_else(|| NameError::Syntax(part.chars().take(80).collect()))?;
            let (slot, name): (&mut Option<String>, &'static str) = match k.to_ascii_uppercase().as_str() {
                "CN" => (&mut cn, "CN"),
                "OU" => (&mut ou, "OU"),
                "O" => (&mut o, "O"),
                "L" => (&mut l, "L"),
                "ST" => (&mut st, "ST"),
                "C" => (&mut c, "C"),
                _ => return Err(NameError::UnknownAttribute(k.chars().take(20).collect())),
            };
            if slot.replace(v.to_string()).is_some() {
                return Err(NameError::Duplicate(name));
            }
        }
        X500Name::new(cn, ou, o.ok_or(NameError::Missing("O"))?, l.ok_or(NameError::Missing("L"))?, st, c.ok_or(NameError::Missing("C"))?)
    }
}

impl fmt::Display for X500Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(cn) = &self.common_name {
            write!(f, "CN={cn}, ")?;
        }
        if let Some(ou) = &self.organisation_unit {
            write!(f, "OU={ou}, ")?;
        }
        write!(f, "O={}, L={}, ", self.organisation, self.locality)?;
        if let Some(st) = &self.state {
            write!(f, "ST={st}, ")?;
        }
        write!(f, "C={}", self.country)
    }
}

impl fmt::Debug for X500Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "X500Name({self})")
    }
}

/// A well-known identity: a legal name and the key it owns.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Party {
    /// The legal name.
    pub name: X500Name,
    /// The key that signs for it (a leaf key, or a composite key for a distributed service).
    pub owning_key: PublicKey,
}

/// An identity known only by its key (a confidential identity, for example).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AnonymousParty {
    /// The key.
    pub owning_key: PublicKey,
}

/// Either a well-known or an anonymous party.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum AbstractParty {
    /// A party with a legal name.
    Party(Party),
    /// A party known only by its key.
    Anonymous(AnonymousParty),
}

impl AbstractParty {
    /// The party's key.
    pub fn owning_key(&self) -> &PublicKey {
        match self {
            AbstractParty::Party(p) => &p.owning_key,
            AbstractParty::Anonymous(a) => &a.owning_key,
        }
    }

    /// The party's legal name, if it is well known.
    pub fn name(&self) -> Option<&X500Name> {
        match self {
            AbstractParty::Party(p) => Some(&p.name),
            AbstractParty::Anonymous(_) => None,
        }
    }
}

impl From<Party> for AbstractParty {
    fn from(p: Party) -> Self {
        AbstractParty::Party(p)
    }
}

impl From<AnonymousParty> for AbstractParty {
    fn from(p: AnonymousParty) -> Self {
        AbstractParty::Anonymous(p)
    }
}

impl fmt::Display for AbstractParty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AbstractParty::Party(p) => write!(f, "{}", p.name),
            AbstractParty::Anonymous(a) => write!(f, "Anonymous({})", a.owning_key.short()),
        }
    }
}

/// A party and an opaque reference it chose (an issuer's account number, for example).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PartyAndReference {
    /// The party.
    pub party: AbstractParty,
    /// The reference bytes.
    pub reference: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let n: X500Name = "O=Alice Corp,L=London,C=GB".parse().unwrap();
        assert_eq!(n.to_string(), "O=Alice Corp, L=London, C=GB");
        assert_eq!(n.to_string().parse::<X500Name>().unwrap(), n);
        let full: X500Name = "CN=Desk 1, OU=Rates, O=Bank, L=Zurich, ST=ZH, C=CH".parse().unwrap();
        assert_eq!(full.common_name(), Some("Desk 1"));
        assert_eq!(crate::encoding::decode::<X500Name>(&crate::encoding::encode(&full)).unwrap(), full);
    }

    #[test]
    fn refuses_each_bad_form_with_its_reason() {
        type Check = fn(&NameError) -> bool;
        let cases: &[(&str, Check)] = &[
            ("L=London,C=GB", |e| *e == NameError::Missing("O")),
            ("O=Alice,L=London", |e| *e == NameError::Missing("C")),
            ("O=Alice,L=London,C=XX", |e| matches!(e, NameError::Country(_))),
            ("O=Alice,L=London,C=gb", |e| matches!(e, NameError::Country(_))),
            ("O=Alice,O=Bob,L=London,C=GB", |e| *e == NameError::Duplicate("O")),
            ("O=Alice,E=x,L=London,C=GB", |e| matches!(e, NameError::UnknownAttribute(_))),
            ("O=Alice,London,C=GB", |e| matches!(e, NameError::Syntax(_))),
            ("O=\"Alice\",L=London,C=GB", |e| matches!(e, NameError::ForbiddenChar { why: "quote mark", .. })),
            ("O=Alice\u{201C},L=London,C=GB", |e| matches!(e, NameError::ForbiddenChar { why: "quote mark", .. })),
            ("O=Ali\u{0007}ce,L=London,C=GB", |e| matches!(e, NameError::ForbiddenChar { why: "control character", .. })),
            ("O=Ali\u{202E}ce,L=London,C=GB", |e| matches!(e, NameError::ForbiddenChar { why: "invisible formatting character", .. })),
            ("O= Alice,L=London,C=GB", |e| *e == NameError::Spacing("O")),
            ("O=Alice ,L=London,C=GB", |e| *e == NameError::Spacing("O")),
            ("O=Alice  Corp,L=London,C=GB", |e| *e == NameError::Spacing("O")),
            ("O=A,L=London,C=GB", |e| matches!(e, NameError::Length { attr: "O", .. })),
        ];
        for (s, ok) in cases {
            let e = s.parse::<X500Name>().unwrap_err();
            assert!(ok(&e), "{s:?} gave {e:?}");
        }
        let long = format!("O={},L=London,C=GB", "a".repeat(129));
        assert!(matches!(long.parse::<X500Name>(), Err(NameError::Length { attr: "O", max: 128, len: 129, .. })));
    }

    #[test]
    fn decoding_validates_too() {
        let bad = crate::encoding::encode(&(None::<String>, None::<String>, "\"Evil\"", "London", None::<String>, "GB"));
        assert!(crate::encoding::decode::<X500Name>(&bad).is_err());
    }
}
