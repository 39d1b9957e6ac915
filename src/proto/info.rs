//! Parser of `show info`: `Name: value` lines, with typed accessors for what reload detection
//! needs (`Pid`, `Start_time_sec`, `Uptime_sec`, `Version`, `node`).

/// The answer to `show info`, in HAProxy's order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Info {
    pub fields: Vec<(String, String)>,
}

impl Info {
    /// Parses the body; lines without `": "` are skipped (none are expected).
    pub fn parse(body: &[u8]) -> Info {
        let text = String::from_utf8_lossy(body);
        let fields =
            text.lines().filter_map(|l| l.split_once(": ")).map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
        Info { fields }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    fn num(&self, name: &str) -> Option<u64> {
        self.get(name)?.parse().ok()
    }

    pub fn pid(&self) -> Option<u64> {
        self.num("Pid")
    }

    /// Absent before HAProxy 2.4.
    pub fn start_time_sec(&self) -> Option<u64> {
        self.num("Start_time_sec")
    }

    pub fn uptime_sec(&self) -> Option<u64> {
        self.num("Uptime_sec")
    }

    pub fn version(&self) -> Option<&str> {
        self.get("Version")
    }

    pub fn node(&self) -> Option<&str> {
        self.get("node")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::test_fixtures::fixture;

    #[test]
    fn both_versions() {
        let i = Info::parse(&fixture("haproxy-2.6.12", "show-info"));
        assert_eq!(i.version(), Some("2.6.12-1+deb12u4"));
        assert_eq!(i.pid(), Some(11629));
        assert_eq!(i.uptime_sec(), Some(0));
        assert!(i.start_time_sec().is_some());
        let i = Info::parse(&fixture("haproxy-3.4.0", "show-info"));
        assert_eq!(i.version(), Some("3.4.0-64a335366"));
        assert_eq!(i.node(), Some("vm"));
        assert_eq!(i.get("Unstoppable Jobs"), Some("0"));
    }
}
