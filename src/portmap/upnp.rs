//! UPnP-IGD port mapping: SSDP discovery (UPnP Device Architecture 1.1 §1.3), the device
//! description, and the WANIPConnection SOAP actions GetExternalIPAddress, AddPortMapping and
//! DeletePortMapping (UPnP IGD WANIPConnection:1/2). The builders and parsers here are pure
//! functions; [`super::driver`] does the sockets, each step bounded.

use std::net::{IpAddr, SocketAddr};

/// SSDP multicast group and port.
pub const SSDP_ADDR: &str = "239.255.255.250:1900";

/// The M-SEARCH asking for an Internet Gateway Device; MX 1 asks devices to answer within 1 s.
pub fn m_search() -> Vec<u8> {
    b"M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\nMAN: \"ssdp:discover\"\r\nMX: 1\r\n\
ST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n\r\n"
        .to_vec()
}

/// The LOCATION header of an SSDP answer (header names are case-insensitive).
pub fn ssdp_location(answer: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(answer).ok()?;
    if !text.starts_with("HTTP/1.1 200") && !text.starts_with("NOTIFY") {
        return None;
    }
    header(text, "location").map(str::to_string)
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// An `http://host:port/path` URL, the only kind an IGD hands out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    pub addr: SocketAddr,
    pub path: String,
}

impl HttpUrl {
    pub fn parse(url: &str) -> Option<HttpUrl> {
        let rest = url.strip_prefix("http://")?;
        let (hostport, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let addr = match hostport.parse::<SocketAddr>() {
            Ok(a) => a,
            Err(_) => SocketAddr::new(hostport.parse::<IpAddr>().ok()?, 80),
        };
        Some(HttpUrl { addr, path: path.to_string() })
    }

    /// A control URL from the description: absolute, or a path on the description's host.
    pub fn join(&self, url: &str) -> Option<HttpUrl> {
        if url.starts_with("http://") {
            HttpUrl::parse(url)
        } else {
            let path = if url.starts_with('/') { url.to_string() } else { format!("/{url}") };
            Some(HttpUrl { addr: self.addr, path })
        }
    }
}

/// The text between the first `<tag>` and its `</tag>` (namespace prefixes ignored).
fn element<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let mut from = 0;
    while let Some(i) = xml[from..].find('<') {
        let start = from + i + 1;
        let end = start + xml[start..].find('>')?;
        let name = &xml[start..end];
        let local = name.rsplit(':').next().unwrap_or(name);
        if local == tag {
            let body = &xml[end + 1..];
            let close = body.find("</")?;
            return Some(body[..close].trim());
        }
        from = end;
    }
    None
}

/// The WAN connection service of a device description: (service type, control URL).
/// WANIPConnection is preferred; WANPPPConnection is what DSL routers offer.
pub fn wan_service(description: &str) -> Option<(String, String)> {
    let mut found = None;
    for block in description.split("<service>").skip(1) {
        let Some(st) = element(block, "serviceType") else { continue };
        let Some(ctl) = element(block, "controlURL") else { continue };
        if st.starts_with("urn:schemas-upnp-org:service:WANIPConnection:") {
            return Some((st.to_string(), ctl.to_string()));
        }
        if st.starts_with("urn:schemas-upnp-org:service:WANPPPConnection:") && found.is_none() {
            found = Some((st.to_string(), ctl.to_string()));
        }
    }
    found
}

/// A SOAP request body for `action` of `service` with the given arguments, in order.
pub fn soap_body(service: &str, action: &str, args: &[(&str, String)]) -> String {
    let mut inner = String::new();
    for (k, v) in args {
        inner.push_str(&format!("<{k}>{v}</{k}>"));
    }
    format!(
        "<?xml version=\"1.0\"?>\r\n<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\" \
s:encodingStyle=\"http://schemas.xmlsoap.org/soap/encoding/\"><s:Body><u:{action} xmlns:u=\"{service}\">{inner}\
</u:{action}></s:Body></s:Envelope>\r\n"
    )
}

/// AddPortMapping arguments for UDP `port` (external = internal) to `client`, lease in seconds.
pub fn add_port_mapping_args(port: u16, client: IpAddr, lease_s: u32) -> Vec<(&'static str, String)> {
    vec![
        ("NewRemoteHost", String::new()),
        ("NewExternalPort", port.to_string()),
        ("NewProtocol", "UDP".into()),
        ("NewInternalPort", port.to_string()),
        ("NewInternalClient", client.to_string()),
        ("NewEnabled", "1".into()),
        ("NewPortMappingDescription", "natkit".into()),
        ("NewLeaseDuration", lease_s.to_string()),
    ]
}

pub fn delete_port_mapping_args(port: u16) -> Vec<(&'static str, String)> {
    vec![("NewRemoteHost", String::new()), ("NewExternalPort", port.to_string()), ("NewProtocol", "UDP".into())]
}

/// The outcome of a SOAP call, from its HTTP status and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SoapResult {
    Ok(String),
    /// UPnP error code and description (e.g. 718 ConflictInMappingEntry).
    Fault {
        code: Option<u32>,
        description: String,
    },
}

pub fn soap_result(status: u16, body: &str) -> SoapResult {
    if status == 200 {
        return SoapResult::Ok(body.to_string());
    }
    SoapResult::Fault {
        code: element(body, "errorCode").and_then(|c| c.parse().ok()),
        description: element(body, "errorDescription").unwrap_or("no description").to_string(),
    }
}

/// The external IP in a GetExternalIPAddress answer.
pub fn external_ip(body: &str) -> Option<IpAddr> {
    element(body, "NewExternalIPAddress")?.parse().ok()
}

/// Splits an HTTP/1.x response into status and body, undoing chunked transfer encoding.
pub fn http_response(raw: &[u8]) -> Option<(u16, String)> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status: u16 = head.split_whitespace().nth(1)?.parse().ok()?;
    let chunked = header(head, "transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    if !chunked {
        return Some((status, body.to_string()));
    }
    let mut out = String::new();
    let mut rest = body;
    loop {
        let (size, after) = rest.split_once("\r\n")?;
        let n = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        if n == 0 {
            return Some((status, out));
        }
        out.push_str(after.get(..n)?);
        rest = after.get(n..)?.strip_prefix("\r\n")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DESC: &str = "<root><device><serviceList><service><serviceType>urn:schemas-upnp-org:service:WANCommonInterfaceConfig:1</serviceType><controlURL>/ctl/CmnIfCfg</controlURL></service>\
<service><serviceType>urn:schemas-upnp-org:service:WANIPConnection:2</serviceType><controlURL>/ctl/IPConn</controlURL></service></serviceList></device></root>";

    #[test]
    fn ssdp_answer_gives_the_description_url() {
        let a = b"HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=120\r\nST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\nLocation: http://10.1.0.1:5000/rootDesc.xml\r\n\r\n";
        assert_eq!(ssdp_location(a).as_deref(), Some("http://10.1.0.1:5000/rootDesc.xml"));
        assert_eq!(ssdp_location(b"M-SEARCH * HTTP/1.1\r\n\r\n"), None);
        assert_eq!(ssdp_location(&[0xff, 0xfe]), None);
    }

    #[test]
    fn description_gives_the_wan_ip_connection_control_url() {
        let (st, ctl) = wan_service(DESC).expect("service");
        assert_eq!(st, "urn:schemas-upnp-org:service:WANIPConnection:2");
        let base = HttpUrl::parse("http://10.1.0.1:5000/rootDesc.xml").unwrap();
        assert_eq!(
            base.join(&ctl).unwrap(),
            HttpUrl { addr: "10.1.0.1:5000".parse().unwrap(), path: "/ctl/IPConn".into() }
        );
        assert_eq!(wan_service("<root/>"), None);
    }

    #[test]
    fn soap_answers_and_faults_are_read() {
        let ok = "<s:Envelope><s:Body><u:GetExternalIPAddressResponse><NewExternalIPAddress>198.51.100.1</NewExternalIPAddress></u:GetExternalIPAddressResponse></s:Body></s:Envelope>";
        assert_eq!(external_ip(ok), Some("198.51.100.1".parse().unwrap()));
        let fault = "<s:Fault><detail><UPnPError><errorCode>718</errorCode><errorDescription>ConflictInMappingEntry</errorDescription></UPnPError></detail></s:Fault>";
        assert_eq!(
            soap_result(500, fault),
            SoapResult::Fault { code: Some(718), description: "ConflictInMappingEntry".into() }
        );
        let body = soap_body("urn:x", "DeletePortMapping", &delete_port_mapping_args(40000));
        assert!(body.contains("<u:DeletePortMapping xmlns:u=\"urn:x\"><NewRemoteHost></NewRemoteHost><NewExternalPort>40000</NewExternalPort>"));
    }

    #[test]
    fn hostile_router_answers_never_panic() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let pieces: [&[u8]; 9] = [
            b"HTTP/1.1 200 OK\r\n",
            b"Location: http://",
            b"Transfer-Encoding: chunked\r\n\r\n",
            b"ffffffffffffffff\r\n",
            b"<service>",
            b"<serviceType>urn:schemas-upnp-org:service:WANIPConnection:1</serviceType>",
            b"<controlURL>",
            b"<",
            b"\xff\xfe</",
        ];
        for _ in 0..20_000 {
            let mut b = Vec::new();
            for _ in 0..(next() % 8) {
                b.extend_from_slice(pieces[(next() % pieces.len() as u64) as usize]);
                if next() % 3 == 0 {
                    b.push((next() % 256) as u8);
                }
            }
            let text = String::from_utf8_lossy(&b);
            let _ = ssdp_location(&b);
            let _ = http_response(&b);
            let _ = wan_service(&text);
            let _ = external_ip(&text);
            let _ = soap_result(500, &text);
            let _ = HttpUrl::parse(&text);
            let _ = super::super::natpmp::parse(&b);
            let _ = super::super::pcp::parse(&b);
        }
    }

    #[test]
    fn http_bodies_plain_and_chunked() {
        assert_eq!(http_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"), Some((200, "hi".into())));
        let chunked = b"HTTP/1.1 500 Internal\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(http_response(chunked), Some((500, "abcde".into())));
        assert_eq!(http_response(b"garbage"), None);
        assert_eq!(http_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"), None);
    }
}
