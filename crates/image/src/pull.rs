//! Pulling images from OCI/Docker registries with oci-client: basic and bearer-token auth
//! (handled by the client, credentials from [`crate::auth`]), manifest lists resolved to
//! linux/amd64, every manifest and blob verified against its digest before use. Plain HTTP only
//! for loopback registries or with `insecure`.

use std::net::IpAddr;

use futures_util::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::{
    IMAGE_MANIFEST_LIST_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE, OCI_IMAGE_INDEX_MEDIA_TYPE,
    OCI_IMAGE_MEDIA_TYPE,
};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use oci_spec::image::ImageIndex;

use crate::auth::Credentials;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::import::{import_manifest, pick_platform, BlobSource};
use crate::progress::Progress;
use crate::store::{Store, Transaction};

/// How to reach the registry.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// Allow plain HTTP to a non-loopback registry.
    pub insecure: bool,
    /// Credentials given for this pull (`--creds`); without them the store's auth.json and
    /// Podman's and Docker's files are consulted, then the pull is anonymous.
    pub credentials: Option<Credentials>,
}

/// The credentials a pull uses and where they came from (for the refusal message).
struct Auth {
    auth: RegistryAuth,
    user: Option<(String, String)>,
}

impl Auth {
    fn of(c: Option<(Credentials, String)>) -> Auth {
        match c {
            Some((c, from)) => Auth {
                auth: RegistryAuth::Basic(c.username.clone(), c.password),
                user: Some((c.username, from)),
            },
            None => Auth {
                auth: RegistryAuth::Anonymous,
                user: None,
            },
        }
    }

    /// An oci-client error as ours: refusals of (missing) credentials get their own errors.
    fn error(&self, registry: &str, reference: &str, e: OciDistributionError) -> Error {
        if !is_auth_failure(&e) {
            return Error::Pull {
                reference: reference.to_string(),
                reason: e.to_string(),
            };
        }
        match &self.user {
            None => Error::AuthRequired {
                registry: registry.to_string(),
            },
            Some((user, from)) => Error::AuthRefused {
                registry: registry.to_string(),
                user: user.clone(),
                source_name: from.clone(),
            },
        }
    }
}

/// Whether the registry (or its token service) said no to who we are.
fn is_auth_failure(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::UnauthorizedError { .. }
        | OciDistributionError::AuthenticationFailure(_) => true,
        OciDistributionError::ServerError { code, .. } => *code == 401,
        OciDistributionError::RegistryError { envelope, .. } => envelope
            .errors
            .iter()
            .any(|e| matches!(e.code, OciErrorCode::Unauthorized | OciErrorCode::Denied)),
        _ => false,
    }
}

fn client_for(registry: &str, resolved: &str, insecure: bool) -> Client {
    let plain_http = insecure || is_loopback(registry);
    let config = ClientConfig {
        protocol: if plain_http {
            ClientProtocol::HttpsExcept(vec![registry.to_string(), resolved.to_string()])
        } else {
            ClientProtocol::Https
        },
        ..Default::default()
    };
    Client::new(config)
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// Checks credentials against `registry` the way `docker login` does: the token service must
/// accept them (bearer registries) or a request with them must not be refused (basic auth).
pub fn check_login(registry: &str, c: &Credentials, insecure: bool) -> Result<()> {
    let reference = format!("{registry}/strata-login-check/probe:latest");
    let r: Reference = reference.parse().map_err(|e| Error::BadReference {
        reference: registry.into(),
        reason: format!("{e}"),
    })?;
    let who = Auth::of(Some((c.clone(), "this login".into())));
    let rt = runtime().map_err(|e| Error::Pull {
        reference: registry.into(),
        reason: format!("start async runtime: {e}"),
    })?;
    let client = client_for(r.registry(), r.resolve_registry(), insecure);
    let token = rt
        .block_on(client.auth(&r, &who.auth, RegistryOperation::Pull))
        .map_err(|e| who.error(registry, registry, e))?;
    if token.is_some() {
        return Ok(());
    }
    // Basic auth (or none): ask for a manifest that does not exist; "unknown" means the
    // credentials got through.
    match rt.block_on(client.pull_manifest_raw(&r, &who.auth, &[OCI_IMAGE_MEDIA_TYPE])) {
        Err(e) if is_auth_failure(&e) => Err(who.error(registry, registry, e)),
        Err(OciDistributionError::RequestError(e)) => Err(Error::Pull {
            reference: registry.into(),
            reason: e.to_string(),
        }),
        _ => Ok(()),
    }
}

/// Pulls `reference` into the store and tags it; returns the local name and manifest digest.
pub fn pull(
    store: &Store,
    reference: &str,
    opts: &PullOptions,
    progress: &dyn Progress,
) -> Result<(String, Digest)> {
    let fail = |reason: String| Error::Pull {
        reference: reference.to_string(),
        reason,
    };
    let name = crate::reference::normalize(reference)?;
    let r: Reference = reference.parse().map_err(|e| Error::BadReference {
        reference: reference.into(),
        reason: format!("{e}"),
    })?;
    let registry = r.registry().to_string();
    let creds = match &opts.credentials {
        Some(c) => Some((c.clone(), "the command line".to_string())),
        None => crate::auth::lookup(store.root(), &registry)?
            .map(|f| (f.credentials, f.source.display().to_string())),
    };
    let who = Auth::of(creds);
    let auth = &who.auth;
    let rt = runtime().map_err(|e| fail(format!("start async runtime: {e}")))?;
    let client = client_for(r.registry(), r.resolve_registry(), opts.insecure);
    let accepted = [
        OCI_IMAGE_MEDIA_TYPE,
        OCI_IMAGE_INDEX_MEDIA_TYPE,
        IMAGE_MANIFEST_MEDIA_TYPE,
        IMAGE_MANIFEST_LIST_MEDIA_TYPE,
    ];

    progress.begin(&format!("resolve {reference}"), None);
    let (bytes, _) = rt
        .block_on(client.pull_manifest_raw(&r, auth, &accepted))
        .map_err(|e| who.error(&registry, reference, e))?;
    let mut md = Digest::of(&bytes);
    if let Some(want) = r.digest() {
        if want != md.as_str() {
            return Err(Error::DigestMismatch {
                what: format!("manifest of {reference}"),
                expected: want.into(),
                actual: md.to_string(),
            });
        }
    }
    let mut manifest = bytes.to_vec();
    let v: serde_json::Value = serde_json::from_slice(&manifest).map_err(|error| Error::Json {
        what: format!("manifest of {reference}"),
        error,
    })?;
    if v.get("manifests").is_some() {
        let index: ImageIndex = serde_json::from_slice(&manifest).map_err(|error| Error::Json {
            what: format!("index of {reference}"),
            error,
        })?;
        let m = pick_platform(index.manifests())
            .ok_or_else(|| fail("the image has no linux/amd64 variant".into()))?;
        md = Digest::parse(m.digest().as_ref())?;
        let by_digest = Reference::with_digest(
            r.registry().to_string(),
            r.repository().to_string(),
            md.to_string(),
        );
        let (b, _) = rt
            .block_on(client.pull_manifest_raw(&by_digest, auth, &accepted))
            .map_err(|e| who.error(&registry, reference, e))?;
        if Digest::of(&b) != md {
            return Err(Error::DigestMismatch {
                what: format!("linux/amd64 manifest of {reference}"),
                expected: md.to_string(),
                actual: Digest::of(&b).to_string(),
            });
        }
        manifest = b.to_vec();
    }
    progress.end(&format!("resolve {reference}"));

    let mut tx = store.begin()?;
    tx.put_bytes(&manifest)?;
    let mut src = Registry {
        rt,
        client,
        reference: r,
        auth,
        name: reference,
    };
    import_manifest(&mut tx, &md, &mut src, progress)?;
    tx.tag(&name, &md)?;
    tx.commit()?;
    Ok((name, md))
}

/// Whether a registry host (`host[:port]`) is on the loopback interface.
fn is_loopback(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        registry
            .rsplit_once(':')
            .map(|(h, _)| h)
            .unwrap_or(registry)
    };
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Downloads blobs into the import's staging area.
struct Registry<'a> {
    rt: tokio::runtime::Runtime,
    client: Client,
    reference: Reference,
    auth: &'a RegistryAuth,
    name: &'a str,
}

impl BlobSource for Registry<'_> {
    fn fetch(
        &mut self,
        tx: &mut Transaction<'_>,
        d: &Digest,
        size: Option<u64>,
        progress: &dyn Progress,
    ) -> Result<()> {
        if tx.has_blob(d)? {
            return Ok(());
        }
        let fail = |reason: String| Error::Pull {
            reference: self.name.to_string(),
            reason,
        };
        let step = format!("pull {}", d.short());
        progress.begin(&step, size);
        let mut w = tx.blob_writer()?;
        let client = &self.client;
        let reference = &self.reference;
        let auth = self.auth;
        self.rt.block_on(async {
            client
                .store_auth_if_needed(reference.resolve_registry(), auth)
                .await;
            let mut stream = client
                .pull_blob_stream(reference, d.as_str())
                .await
                .map_err(|e| fail(format!("blob {d}: {e}")))?;
            let mut n = 0u64;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| fail(format!("blob {d}: {e}")))?;
                n += chunk.len() as u64;
                if size.is_some_and(|s| n > s) {
                    return Err(Error::SizeMismatch {
                        what: format!("blob {d}"),
                        expected: size.unwrap_or(0),
                        actual: n,
                    });
                }
                w.write(&chunk)?;
                progress.advance(chunk.len() as u64);
            }
            Ok::<(), Error>(())
        })?;
        let (actual, n) = tx.finish_blob(w, Some(d))?;
        if actual != *d {
            return Err(Error::DigestMismatch {
                what: format!("blob from {}", self.name),
                expected: d.to_string(),
                actual: actual.to_string(),
            });
        }
        if let Some(s) = size.filter(|s| *s != n) {
            return Err(Error::SizeMismatch {
                what: format!("blob {d}"),
                expected: s,
                actual: n,
            });
        }
        progress.end(&step);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn loopback_detection() {
        for (r, want) in [
            ("127.0.0.1:5000", true),
            ("localhost:80", true),
            ("[::1]:5000", true),
            ("127.1.2.3", true),
            ("docker.io", false),
            ("10.0.0.1:5000", false),
            ("example.com:443", false),
        ] {
            assert_eq!(super::is_loopback(r), want, "{r}");
        }
    }
}
