//! The network's certificate hierarchy and how a peer's certificate is checked.
//!
//! As in Corda: a **root CA** certifies a **doorman** (the network CA), which certifies each
//! node's **node CA**, which certifies the node's **legal identity** certificate and its **TLS**
//! certificate. Every certificate names an X.500 legal name and carries a non-critical role
//! extension (OID `1.3.6.1.4.1.50530.1.1`, a DER INTEGER; non-critical because rustls rejects
//! unknown critical extensions). Keys are Ed25519 or ECDSA P-256.
//!
//! [`verify`] is the check every connection and every published `NodeInfo` goes through: the
//! chain must lead to the network's root (signatures, validity, CA constraints — done by
//! `rustls-webpki`), the leaf must have the expected role and, when given, the expected X.500
//! name, the node CA must name the same legal entity as its leaf (a node cannot certify another
//! name), and nothing in the chain may be on the network's revocation list.

use std::collections::BTreeSet;

use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyUsagePurpose,
};
use rustls_pki_types::{CertificateDer, UnixTime};
use serde::{Deserialize, Serialize};
use treaty_core::{KeyPair, PublicKey, SecureHash, X500Name};
use x509_parser::prelude::{FromDer, X509Certificate};

/// The role extension's OID (Corda's `CertRole` arc).
pub const ROLE_OID: &[u64] = &[1, 3, 6, 1, 4, 1, 50530, 1, 1];

/// What a certificate is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[repr(u8)]
pub enum CertRole {
    /// The network's root of trust.
    RootCa = 1,
    /// The doorman: certifies node CAs.
    DoormanCa = 2,
    /// A node's own CA: certifies its identity and TLS certificates.
    NodeCa = 3,
    /// A node's legal identity (its `Party` key).
    LegalIdentity = 4,
    /// A node's TLS certificate.
    Tls = 5,
    /// The network map's signing certificate.
    NetworkMap = 6,
}

impl CertRole {
    fn from_u8(b: u8) -> Option<CertRole> {
        use CertRole::*;
        [RootCa, DoormanCa, NodeCa, LegalIdentity, Tls, NetworkMap].into_iter().find(|r| *r as u8 == b)
    }
    fn is_ca(self) -> bool {
        matches!(self, CertRole::RootCa | CertRole::DoormanCa | CertRole::NodeCa)
    }
}

/// Why a certificate could not be issued or was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PkiError {
    /// Issuing failed.
    #[error("cannot issue certificate: {0}")]
    Issue(String),
    /// The chain does not lead to this network's root, or is otherwise invalid.
    #[error("certificate chain is not trusted by this network: {0}")]
    Untrusted(String),
    /// A certificate that cannot be parsed, or lacks what Treaty requires.
    #[error("malformed certificate: {0}")]
    Malformed(String),
    /// The certificate is for another role.
    #[error("certificate has role {found:?}, expected {expected:?}")]
    WrongRole {
        /// Needed.
        expected: CertRole,
        /// Present.
        found: Option<CertRole>,
    },
    /// The certificate names someone else.
    #[error("certificate is for {found}, but this connection is for {expected}")]
    WrongName {
        /// The name expected.
        expected: String,
        /// The name in the certificate.
        found: String,
    },
    /// The node CA names a different entity than the certificate it issued.
    #[error("node CA {ca} issued a certificate for {leaf}: a node may only certify itself")]
    ForeignName {
        /// The node CA's name.
        ca: String,
        /// The leaf's name.
        leaf: String,
    },
    /// Something in the chain is revoked.
    #[error("{0} is revoked on this network")]
    Revoked(String),
}

/// Names and keys the network operator has revoked (compromised or expelled identities),
/// published with the network map.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationList {
    /// Revoked legal names: no certificate naming them is accepted.
    pub names: BTreeSet<X500Name>,
    /// Revoked keys, by SHA-256 of the certificate's SubjectPublicKeyInfo DER.
    pub keys: BTreeSet<SecureHash>,
    /// Incremented on every change.
    pub epoch: u32,
}

/// A certificate and the key that certificate's holder signs with, able to issue others.
pub struct CertifiedKey {
    /// The certificate, DER.
    pub cert: Vec<u8>,
    /// The subject's key.
    pub key: KeyPair,
    /// The subject's name.
    pub name: X500Name,
    /// The role.
    pub role: CertRole,
}

/// Validity window for issued certificates, in seconds since the epoch.
#[derive(Clone, Copy, Debug)]
pub struct Validity {
    /// Not before.
    pub not_before: i64,
    /// Not after.
    pub not_after: i64,
}

impl Validity {
    /// From one day ago (clock skew) for `years` years.
    pub fn from_now(now_secs: i64, years: i64) -> Validity {
        Validity { not_before: now_secs - 86_400, not_after: now_secs + years * 365 * 86_400 }
    }
}

const ED25519_PKCS8_PREFIX: [u8; 16] = [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];

/// The PKCS#8 DER encoding of a private key (what TLS libraries load).
pub fn pkcs8_der(key: &KeyPair) -> Result<Vec<u8>, PkiError> {
    match key {
        KeyPair::Ed25519(sk) => Ok([ED25519_PKCS8_PREFIX.as_slice(), &sk.to_bytes()].concat()),
        KeyPair::EcdsaP256(sk) => {
            use p256::pkcs8::EncodePrivateKey;
            Ok(sk.to_pkcs8_der().map_err(|e| PkiError::Issue(format!("key conversion: {e}")))?.as_bytes().to_vec())
        }
    }
}

fn rcgen_key(key: &KeyPair) -> Result<rcgen::KeyPair, PkiError> {
    let alg = match key {
        KeyPair::Ed25519(_) => &rcgen::PKCS_ED25519,
        KeyPair::EcdsaP256(_) => &rcgen::PKCS_ECDSA_P256_SHA256,
    };
    rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8_der(key)?.into(), alg).map_err(|e| PkiError::Issue(format!("key conversion: {e}")))
}

fn distinguished_name(name: &X500Name) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    if let Some(cn) = name.common_name() {
        dn.push(DnType::CommonName, cn);
    }
    if let Some(ou) = name.organisation_unit() {
        dn.push(DnType::OrganizationalUnitName, ou);
    }
    dn.push(DnType::OrganizationName, name.organisation());
    dn.push(DnType::LocalityName, name.locality());
    if let Some(st) = name.state() {
        dn.push(DnType::StateOrProvinceName, st);
    }
    dn.push(DnType::CountryName, name.country());
    dn
}

fn params(name: &X500Name, role: CertRole, validity: Validity, serial: [u8; 16]) -> Result<CertificateParams, PkiError> {
    let mut p = CertificateParams::default();
    let time = |s: i64| rcgen::date_time_ymd(1970, 1, 1) + std::time::Duration::from_secs(s.max(0) as u64);
    p.not_before = time(validity.not_before);
    p.not_after = time(validity.not_after);
    p.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
    p.distinguished_name = distinguished_name(name);
    p.is_ca = match role {
        CertRole::RootCa => IsCa::Ca(BasicConstraints::Unconstrained),
        CertRole::DoormanCa => IsCa::Ca(BasicConstraints::Constrained(1)),
        CertRole::NodeCa => IsCa::Ca(BasicConstraints::Constrained(0)),
        _ => IsCa::ExplicitNoCa,
    };
    p.key_usages = if role.is_ca() {
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature]
    } else {
        vec![KeyUsagePurpose::DigitalSignature]
    };
    if role == CertRole::Tls {
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    }
    let mut ext = CustomExtension::from_oid_content(ROLE_OID, vec![0x02, 0x01, role as u8]);
    ext.set_criticality(false);
    p.custom_extensions = vec![ext];
    p.use_authority_key_identifier_extension = true;
    Ok(p)
}

/// Creates a self-signed root CA.
pub fn root_ca(name: X500Name, key: KeyPair, validity: Validity, serial: [u8; 16]) -> Result<CertifiedKey, PkiError> {
    let p = params(&name, CertRole::RootCa, validity, serial)?;
    let k = rcgen_key(&key)?;
    let cert = p.self_signed(&k).map_err(|e| PkiError::Issue(e.to_string()))?;
    Ok(CertifiedKey { cert: cert.der().to_vec(), key, name, role: CertRole::RootCa })
}

impl CertifiedKey {
    /// Issues a certificate of `role` for `name` and `subject_key`, signed by this CA.
    pub fn issue(
        &self,
        name: X500Name,
        subject_key: KeyPair,
        role: CertRole,
        validity: Validity,
        serial: [u8; 16],
    ) -> Result<CertifiedKey, PkiError> {
        if !self.role.is_ca() {
            return Err(PkiError::Issue(format!("a {:?} certificate cannot issue certificates", self.role)));
        }
        let p = params(&name, role, validity, serial)?;
        let issuer_key = rcgen_key(&self.key)?;
        let issuer = Issuer::from_ca_cert_der(&CertificateDer::from(self.cert.as_slice()), issuer_key)
            .map_err(|e| PkiError::Issue(e.to_string()))?;
        let subject = rcgen_key(&subject_key)?;
        let cert = p.signed_by(&subject, &issuer).map_err(|e| PkiError::Issue(e.to_string()))?;
        Ok(CertifiedKey { cert: cert.der().to_vec(), key: subject_key, name, role })
    }
}

/// What a verified certificate says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedCert {
    /// The legal name.
    pub name: X500Name,
    /// The role.
    pub role: CertRole,
    /// The certified public key.
    pub key: PublicKey,
}

struct Parsed {
    name: X500Name,
    role: Option<CertRole>,
    spki_hash: SecureHash,
    key: Option<PublicKey>,
}

fn attr(it: impl Iterator<Item = String>) -> Option<String> {
    it.into_iter().next()
}

fn parse(der: &[u8]) -> Result<Parsed, PkiError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| PkiError::Malformed(e.to_string()))?;
    let subject = cert.subject();
    let text = |v: &x509_parser::x509::AttributeTypeAndValue<'_>| v.as_str().map(str::to_string).ok();
    let name = X500Name::new(
        attr(subject.iter_common_name().filter_map(text)),
        attr(subject.iter_organizational_unit().filter_map(text)),
        attr(subject.iter_organization().filter_map(text)).ok_or_else(|| PkiError::Malformed("subject has no O".into()))?,
        attr(subject.iter_locality().filter_map(text)).ok_or_else(|| PkiError::Malformed("subject has no L".into()))?,
        attr(subject.iter_state_or_province().filter_map(text)),
        attr(subject.iter_country().filter_map(text)).ok_or_else(|| PkiError::Malformed("subject has no C".into()))?,
    )
    .map_err(|e| PkiError::Malformed(format!("subject is not a valid legal name: {e}")))?;
    let role = cert
        .extensions()
        .iter()
        .find(|e| e.oid.iter().is_some_and(|mut arcs| ROLE_OID.iter().all(|&a| arcs.next() == Some(a)) && arcs.next().is_none()));
    let role = match role {
        Some(ext) if ext.critical => return Err(PkiError::Malformed("the role extension must not be critical".into())),
        Some(ext) => match ext.value {
            [0x02, 0x01, b] => CertRole::from_u8(*b),
            _ => None,
        },
        None => None,
    };
    let spki = cert.public_key();
    let spki_hash = SecureHash::sha256(spki.raw);
    let bits = spki.subject_public_key.data.as_ref();
    let key = match bits.len() {
        32 => {
            <[u8; 32]>::try_from(bits).ok().and_then(|b| treaty_core::crypto::Ed25519PublicKey::from_bytes(b).ok()).map(PublicKey::Ed25519)
        }
        65 | 33 => p256::PublicKey::from_sec1_bytes(bits).ok().and_then(|pk| {
            use p256::elliptic_curve::sec1::ToSec1Point;
            let compressed = pk.to_sec1_point(true);
            <[u8; 33]>::try_from(compressed.as_bytes())
                .ok()
                .and_then(|b| treaty_core::crypto::P256PublicKey::from_bytes(b).ok())
                .map(PublicKey::EcdsaP256)
        }),
        _ => None,
    };
    Ok(Parsed { name, role, spki_hash, key })
}

/// Checks `chain` (leaf first, then its issuers up to but excluding the root) against this
/// network's `root`: trust, validity at `now`, the leaf's `role`, the `expected` name if given,
/// the node CA's name, and revocation.
pub fn verify(
    chain: &[Vec<u8>],
    root: &[u8],
    role: CertRole,
    expected: Option<&X500Name>,
    revoked: &RevocationList,
    now_secs: u64,
) -> Result<VerifiedCert, PkiError> {
    let leaf_der = chain.first().ok_or_else(|| PkiError::Malformed("empty certificate chain".into()))?;
    let root_der = CertificateDer::from(root);
    let anchor = webpki::anchor_from_trusted_cert(&root_der).map_err(|e| PkiError::Untrusted(format!("root: {e}")))?;
    let leaf = CertificateDer::from(leaf_der.as_slice());
    let ee = webpki::EndEntityCert::try_from(&leaf).map_err(|e| PkiError::Malformed(e.to_string()))?;
    let intermediates: Vec<CertificateDer<'_>> = chain[1..].iter().map(|c| CertificateDer::from(c.as_slice())).collect();
    let usage = if role == CertRole::Tls { webpki::KeyUsage::client_auth() } else { webpki::KeyUsage::required_if_present(&[]) };
    ee.verify_for_usage(
        &[webpki::ring::ED25519, webpki::ring::ECDSA_P256_SHA256],
        &[anchor],
        &intermediates,
        UnixTime::since_unix_epoch(std::time::Duration::from_secs(now_secs)),
        usage,
        None,
        None,
    )
    .map_err(|e| PkiError::Untrusted(format!("{e:?}")))?;
    let parsed: Vec<Parsed> = chain.iter().map(|c| parse(c)).collect::<Result<_, _>>()?;
    let leaf = &parsed[0];
    if leaf.role != Some(role) {
        return Err(PkiError::WrongRole { expected: role, found: leaf.role });
    }
    if let Some(expected) = expected
        && leaf.name != *expected
    {
        return Err(PkiError::WrongName { expected: expected.to_string(), found: leaf.name.to_string() });
    }
    if let Some(ca) = parsed.iter().skip(1).find(|p| p.role == Some(CertRole::NodeCa))
        && ca.name != leaf.name
    {
        return Err(PkiError::ForeignName { ca: ca.name.to_string(), leaf: leaf.name.to_string() });
    }
    let root_parsed = parse(root)?;
    for p in parsed.iter().chain(std::iter::once(&root_parsed)) {
        if revoked.names.contains(&p.name) || revoked.keys.contains(&p.spki_hash) {
            return Err(PkiError::Revoked(p.name.to_string()));
        }
    }
    let key = leaf.key.clone().ok_or_else(|| PkiError::Malformed("unsupported public key (Ed25519 or P-256 only)".into()))?;
    Ok(VerifiedCert { name: leaf.name.clone(), role, key })
}

/// The legal name a certificate names.
pub fn certificate_name(der: &[u8]) -> Result<X500Name, PkiError> {
    parse(der).map(|p| p.name)
}

/// SHA-256 of a certificate's SubjectPublicKeyInfo, as used in [`RevocationList::keys`].
pub fn spki_hash(der: &[u8]) -> Result<SecureHash, PkiError> {
    parse(der).map(|p| p.spki_hash)
}
