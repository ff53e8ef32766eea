// What "one client address" is for every per-address limit and log line (PeerHost): an IPv4
// address, an IPv6 prefix (an IPv6 host is usually given a whole /64), in every form gRPC and the
// front door write peers in.
#include <gtest/gtest.h>

#include "server/peer_log.h"

namespace framepipe {
namespace {

TEST(PeerAddressTest, Ipv4IsTheAddress) {
  EXPECT_EQ(PeerHost("ipv4:10.1.2.3:5678", 64), "10.1.2.3");
  EXPECT_EQ(PeerHost("ipv4:10.1.2.3:5678", 128), "10.1.2.3");
  EXPECT_NE(PeerHost("ipv4:10.1.2.3:1", 64), PeerHost("ipv4:10.1.2.4:1", 64));
}

TEST(PeerAddressTest, Ipv6IsItsPrefix) {
  const std::string a = PeerHost("ipv6:[2001:db8:1:2:3:4:5:6]:443", 64);
  EXPECT_EQ(a, "2001:db8:1:2::/64");
  // Every address of the /64 is the same client; the next /64 is another.
  EXPECT_EQ(PeerHost("ipv6:[2001:db8:1:2:ffff:ffff:ffff:ffff]:9", 64), a);
  EXPECT_EQ(PeerHost("ipv6:[2001:db8:1:2::]:9", 64), a);
  EXPECT_EQ(PeerHost("ipv6:[2001:db8:1:3::1]:9", 64), "2001:db8:1:3::/64");
  // Prefixes off a byte or group boundary keep exactly their bits.
  EXPECT_EQ(PeerHost("ipv6:[2001:db8:1:1234::1]:9", 60), "2001:db8:1:1230::/60");
  EXPECT_EQ(PeerHost("ipv6:[2001:db8:1:1234::1]:9", 56), "2001:db8:1:1200::/56");
  EXPECT_EQ(PeerHost("ipv6:[2001:db8:ffff::1]:9", 33), "2001:db8:8000::/33");
  EXPECT_EQ(PeerHost("ipv6:[2001:db8:ffff::1]:9", 16), "2001::/16");
  // 128: each address on its own, as written.
  EXPECT_EQ(PeerHost("ipv6:[2001:db8:1:2:3:4:5:6]:443", 128), "2001:db8:1:2:3:4:5:6");
  EXPECT_EQ(PeerHost("ipv6:[::1]:5678", 128), "::1");
  EXPECT_EQ(PeerHost("ipv6:[::1]:5678", 64), "::/64");
}

TEST(PeerAddressTest, GrpcsEscapedBracketsAndBareForms) {
  // gRPC's own listener writes the brackets URI-escaped.
  EXPECT_EQ(PeerHost("ipv6:%5B2001:db8:1:2:3:4:5:6%5D:443", 64), "2001:db8:1:2::/64");
  EXPECT_EQ(PeerHost("ipv6:%5b::1%5d:443", 128), "::1");
  EXPECT_EQ(PeerHost("ipv6:%5B::1%5D:443", 64), "::/64");
  EXPECT_EQ(PeerHost("ipv6:2001:db8::1:443", 64), "2001:db8::/64");
}

TEST(PeerAddressTest, Ipv4MappedIsIpv4) {
  EXPECT_EQ(PeerHost("ipv6:[::ffff:10.1.2.3]:5678", 64), "10.1.2.3");
  EXPECT_EQ(PeerHost("ipv6:%5B::ffff:10.1.2.3%5D:5678", 128), "10.1.2.3");
  EXPECT_EQ(PeerHost("ipv6:[::ffff:10.1.2.3]:1", 64), PeerHost("ipv4:10.1.2.3:2", 64));
}

TEST(PeerAddressTest, AnythingElseAsItIs) {
  EXPECT_EQ(PeerHost("unix:/run/framepipe.sock", 64), "unix:/run/framepipe.sock");
  EXPECT_EQ(PeerHost("unix:", 64), "unix:");
  EXPECT_EQ(PeerHost("fd:17", 64), "fd:17");
  // Not an address (a zone index, garbage): kept as written, never masked into someone else's.
  EXPECT_EQ(PeerHost("ipv6:[fe80::1%25eth0]:5", 64), "fe80::1%25eth0");
  EXPECT_EQ(PeerHost("ipv6:[not-an-address]:5", 64), "not-an-address");
  EXPECT_EQ(PeerHost("ipv6:[", 64), "");
}

}  // namespace
}  // namespace framepipe
