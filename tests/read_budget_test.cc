// The read budget's policy, exactly: what is granted at once, what waits where, and what each
// release or forgotten request grants, in which order.
#include "server/read_budget.h"

#include <gtest/gtest.h>

#include <random>
#include <vector>

namespace framepipe {
namespace {

int ids[64];
void* Who(int i) { return &ids[i]; }

std::vector<std::pair<void*, uint64_t>> Pairs(const std::vector<ReadBudget::Grant>& g) {
  std::vector<std::pair<void*, uint64_t>> out;
  for (const auto& x : g) out.emplace_back(x.who, x.bytes);
  return out;
}

using Want = std::vector<std::pair<void*, uint64_t>>;

TEST(ReadBudgetTest, NoBudgetGrantsEverything) {
  ReadBudget b(0, 0);
  for (int i = 0; i < 10; ++i) EXPECT_TRUE(b.Reserve(Who(i), "a", uint64_t{1} << 40));
  EXPECT_EQ(b.used(), 0u);
  EXPECT_TRUE(b.Release("a", 5).empty());
}

TEST(ReadBudgetTest, FirstComeFirstServedWithinTheWholeBudget) {
  ReadBudget b(100, 0);
  EXPECT_TRUE(b.Reserve(Who(0), "a", 60));
  EXPECT_FALSE(b.Reserve(Who(1), "b", 50));  // does not fit: waits
  EXPECT_FALSE(b.Reserve(Who(2), "c", 10));  // would fit, but does not overtake the waiter
  EXPECT_EQ(b.waiting(), 2u);
  EXPECT_EQ(Pairs(b.Release("a", 60)), (Want{{Who(1), 50}, {Who(2), 10}}));
  EXPECT_EQ(b.used(), 60u);
  EXPECT_EQ(b.waiting(), 0u);
}

TEST(ReadBudgetTest, ARequestLargerThanTheBudgetIsGrantedWhenNothingIsHeld) {
  ReadBudget b(100, 0);
  EXPECT_TRUE(b.Reserve(Who(0), "a", 500));
  EXPECT_EQ(b.used(), 500u);
  EXPECT_FALSE(b.Reserve(Who(1), "a", 1));
  EXPECT_EQ(Pairs(b.Release("a", 500)), (Want{{Who(1), 1}}));
  EXPECT_TRUE(b.Reserve(Who(2), "b", 99));
  EXPECT_FALSE(b.Reserve(Who(3), "c", 500));
  EXPECT_EQ(Pairs(b.Release("a", 1)), Want{});
  EXPECT_EQ(Pairs(b.Release("b", 99)), (Want{{Who(3), 500}}));
}

// The attack this exists for: one address's calls reserve and never send. They hold its share
// and wait in its own queue; another address reads at once.
TEST(ReadBudgetTest, OneAddressHoldsAtMostItsShareAndOthersReadAtOnce) {
  ReadBudget b(100, 25);
  int granted = 0;
  for (int i = 0; i < 40; ++i) granted += b.Reserve(Who(i), "attacker", 10);
  EXPECT_EQ(granted, 2);  // 20 of its 25
  EXPECT_EQ(b.held_by("attacker"), 20u);
  EXPECT_EQ(b.waiting(), 38u);
  // Everyone else: 80 left, granted at once, in any order.
  EXPECT_TRUE(b.Reserve(Who(40), "honest", 20));
  EXPECT_TRUE(b.Reserve(Who(41), "other", 25));
  EXPECT_TRUE(b.Reserve(Who(42), "third", 25));
  EXPECT_EQ(b.used(), 90u);
  // The honest stream's next read, after its first: at once again.
  EXPECT_EQ(Pairs(b.Release("honest", 20)), Want{});
  EXPECT_TRUE(b.Reserve(Who(40), "honest", 10));
  // The attacker's own release grants its own next waiter, and only that.
  EXPECT_EQ(Pairs(b.Release("attacker", 10)), (Want{{Who(2), 10}}));
  EXPECT_EQ(b.held_by("attacker"), 20u);
}

TEST(ReadBudgetTest, WithinItsShareAnAddressStillQueuesForTheWholeBudget) {
  ReadBudget b(100, 50);
  EXPECT_TRUE(b.Reserve(Who(0), "a", 50));
  EXPECT_TRUE(b.Reserve(Who(1), "b", 40));
  EXPECT_FALSE(b.Reserve(Who(2), "c", 30));  // within c's share, not within the budget
  EXPECT_EQ(b.held_by("c"), 30u);            // counted against c's share while it waits
  EXPECT_FALSE(b.Reserve(Who(3), "c", 50));  // over c's share: waits in c's queue
  EXPECT_FALSE(b.Reserve(Who(4), "d", 5));   // behind the global waiter, not overtaking it
  EXPECT_EQ(Pairs(b.Release("b", 40)), (Want{{Who(2), 30}, {Who(4), 5}}));
  EXPECT_EQ(b.used(), 85u);
  // c's release moves its own waiter up, which then waits for room in the budget.
  EXPECT_EQ(Pairs(b.Release("c", 30)), Want{});
  EXPECT_EQ(b.held_by("c"), 50u);
  EXPECT_EQ(b.used(), 55u);
  EXPECT_EQ(Pairs(b.Release("a", 50)), (Want{{Who(3), 50}}));
}

TEST(ReadBudgetTest, ForgettingAQueuedRequestUnblocksThoseBehindIt) {
  ReadBudget b(100, 60);
  EXPECT_TRUE(b.Reserve(Who(0), "a", 50));
  EXPECT_FALSE(b.Reserve(Who(1), "b", 60));  // global queue head: needs 60, 50 free
  EXPECT_FALSE(b.Reserve(Who(2), "c", 10));  // behind it
  EXPECT_FALSE(b.Reserve(Who(3), "b", 10));  // over b's share: b's own queue
  // b's big call ends before its read: c goes at once, and b's other call moves up.
  EXPECT_EQ(Pairs(b.Forget(Who(1), "b")), (Want{{Who(2), 10}, {Who(3), 10}}));
  EXPECT_EQ(b.used(), 70u);
  EXPECT_EQ(b.waiting(), 0u);
  // Forgetting a request already granted, or of an unknown address, changes nothing.
  EXPECT_EQ(Pairs(b.Forget(Who(2), "c")), Want{});
  EXPECT_EQ(Pairs(b.Forget(Who(9), "nobody")), Want{});
  EXPECT_EQ(b.used(), 70u);
}

TEST(ReadBudgetTest, ForgettingAWaiterInItsAddressQueue) {
  ReadBudget b(100, 20);
  EXPECT_TRUE(b.Reserve(Who(0), "a", 20));
  EXPECT_FALSE(b.Reserve(Who(1), "a", 20));
  EXPECT_FALSE(b.Reserve(Who(2), "a", 20));
  EXPECT_EQ(Pairs(b.Forget(Who(1), "a")), Want{});
  EXPECT_EQ(Pairs(b.Release("a", 20)), (Want{{Who(2), 20}}));
  EXPECT_EQ(Pairs(b.Release("a", 20)), Want{});
  EXPECT_EQ(b.used(), 0u);
  EXPECT_EQ(b.held_by("a"), 0u);
}

// Random reserve / release / forget by many streams of a few addresses: every request is granted
// exactly once unless forgotten, the budget and every share hold (but for a lone oversized
// request), and nothing waits while its address and the budget have room.
TEST(ReadBudgetTest, RandomTrafficKeepsEveryBoundAndGrantsEachRequestOnce) {
  std::mt19937 rng(7);
  for (int round = 0; round < 20; ++round) {
    const uint64_t total = 1000, share = 250;
    ReadBudget b(total, share);
    enum State { kIdle, kWaiting, kHolding };
    struct S {
      State state = kIdle;
      uint64_t bytes = 0;
      std::string peer;
    };
    std::vector<S> s(64);
    for (int i = 0; i < 64; ++i) s[i].peer = "p" + std::to_string(i % 5);
    auto apply = [&](const std::vector<ReadBudget::Grant>& grants) {
      for (const auto& g : grants) {
        const int i = static_cast<int*>(g.who) - ids;
        ASSERT_EQ(s[i].state, kWaiting) << "stream " << i << " granted twice";
        ASSERT_EQ(s[i].bytes, g.bytes);
        s[i].state = kHolding;
      }
    };
    for (int step = 0; step < 4000; ++step) {
      const int i = static_cast<int>(rng() % 64);
      switch (s[i].state) {
        case kIdle:
          s[i].bytes = 1 + rng() % (rng() % 10 == 0 ? 400 : 120);
          s[i].state = b.Reserve(Who(i), s[i].peer, s[i].bytes) ? kHolding : kWaiting;
          break;
        case kHolding:
          s[i].state = kIdle;
          apply(b.Release(s[i].peer, s[i].bytes));
          break;
        case kWaiting:
          if (rng() % 8 == 0) {
            s[i].state = kIdle;
            apply(b.Forget(Who(i), s[i].peer));
          }
          break;
      }
      uint64_t used = 0;
      std::map<std::string, uint64_t> by_peer;
      std::map<std::string, int> holders;
      for (const S& x : s) {
        if (x.state != kHolding) continue;
        used += x.bytes;
        by_peer[x.peer] += x.bytes;
        ++holders[x.peer];
      }
      ASSERT_EQ(b.used(), used);
      ASSERT_TRUE(used <= total || holders.size() == 1) << used;
      for (const auto& [peer, bytes] : by_peer) {
        ASSERT_TRUE(bytes <= share || holders[peer] == 1) << peer << " holds " << bytes;
      }
      if (b.waiting() > 0 && used == 0) FAIL() << "requests wait while nothing is held";
    }
  }
}

}  // namespace
}  // namespace framepipe
