//! Parsing the image's /etc/passwd and /etc/group (image-controlled input) to resolve `--user`.

/// A resolved user: uid, primary gid, supplementary gids and home directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub home: Option<String>,
}

/// A passwd line: name, uid, gid, home.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

/// A group line: name, gid, members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEntry {
    pub name: String,
    pub gid: u32,
    pub members: Vec<String>,
}

/// Parses /etc/passwd; malformed lines are skipped (as libc does).
pub fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 7 || f[0].is_empty() {
                return None;
            }
            Some(PasswdEntry {
                name: f[0].to_string(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: f[5].to_string(),
            })
        })
        .collect()
}

/// Parses /etc/group; malformed lines are skipped.
pub fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 4 || f[0].is_empty() {
                return None;
            }
            let members = f[3]
                .split(',')
                .filter(|m| !m.is_empty())
                .map(str::to_string)
                .collect();
            Some(GroupEntry {
                name: f[0].to_string(),
                gid: f[2].parse().ok()?,
                members,
            })
        })
        .collect()
}

/// Why a `--user` spec could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserError {
    UnknownUser(String),
    UnknownGroup(String),
}

/// Resolves a Docker `--user` spec (`name`, `uid`, `name:group`, `uid:gid`, ...) against the
/// image's passwd and group files. A numeric uid that is not in passwd is allowed (gid 0 then),
/// like Docker.
pub fn resolve(
    spec: &str,
    passwd: &[PasswdEntry],
    group: &[GroupEntry],
) -> Result<User, UserError> {
    let (u, g) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let u = if u.is_empty() { "0" } else { u };
    let entry = match u.parse::<u32>() {
        Ok(uid) => passwd
            .iter()
            .find(|p| p.uid == uid)
            .cloned()
            .map(Ok)
            .unwrap_or(Err(uid)),
        Err(_) => Ok(passwd
            .iter()
            .find(|p| p.name == u)
            .cloned()
            .ok_or_else(|| UserError::UnknownUser(u.to_string()))?),
    };
    let (uid, mut gid, name, home) = match entry {
        Ok(p) => (p.uid, p.gid, Some(p.name), Some(p.home)),
        Err(uid) => (uid, 0, None, None),
    };
    let explicit_group = g.is_some();
    if let Some(g) = g {
        gid = match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group
                .iter()
                .find(|e| e.name == g)
                .map(|e| e.gid)
                .ok_or_else(|| UserError::UnknownGroup(g.to_string()))?,
        };
    }
    let mut additional_gids = Vec::new();
    if !explicit_group {
        if let Some(name) = &name {
            for e in group {
                if e.members.iter().any(|m| m == name)
                    && e.gid != gid
                    && !additional_gids.contains(&e.gid)
                {
                    additional_gids.push(e.gid);
                }
            }
        }
    }
    Ok(User {
        uid,
        gid,
        additional_gids,
        home,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:u:/home/user:/bin/sh\nbroken\n:x:1:1::/:\nbad:x:notnum:1::/:/bin/sh\n";
    const G: &str = "root:x:0:\nuser:x:1000:\nwheel:x:10:user,other\ngarbage\n";

    #[test]
    fn resolves_names_and_numbers() {
        let p = parse_passwd(P);
        let g = parse_group(G);
        assert_eq!(p.len(), 2);
        assert_eq!(
            resolve("user", &p, &g).unwrap(),
            User {
                uid: 1000,
                gid: 1000,
                additional_gids: vec![10],
                home: Some("/home/user".into())
            }
        );
        assert_eq!(resolve("1000:10", &p, &g).unwrap().gid, 10);
        assert_eq!(resolve("user:wheel", &p, &g).unwrap().gid, 10);
        assert_eq!(
            resolve("4242", &p, &g).unwrap(),
            User {
                uid: 4242,
                gid: 0,
                additional_gids: vec![],
                home: None
            }
        );
        assert_eq!(
            resolve("nobody", &p, &g),
            Err(UserError::UnknownUser("nobody".into()))
        );
        assert_eq!(
            resolve("user:nogroup", &p, &g),
            Err(UserError::UnknownGroup("nogroup".into()))
        );
    }

    #[test]
    fn hostile_files_do_not_panic() {
        for t in [
            "",
            ":::::::",
            "\0\0\0",
            "a:b:99999999999999999999:1:::",
            "x:x:1:1:::\n".repeat(1000).as_str(),
        ] {
            let p = parse_passwd(t);
            let g = parse_group(t);
            let _ = resolve("x", &p, &g);
            let _ = resolve("1:1", &p, &g);
        }
    }
}
