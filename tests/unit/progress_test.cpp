// ProgressBar: in-place redraws on a pseudo-terminal, plain periodic lines on a pipe, formats,
// rank-zero behaviour, bad inputs. A fake clock makes rates and times exact.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <pty.h>
#include <termios.h>
#include <unistd.h>

#include <cerrno>
#include <cppfabric/utilities/progress.hpp>
#include <cppfabric/utilities/rank_zero.hpp>
#include <string>
#include <vector>

#include "test_utils.hpp"

using cppfabric::utilities::ProgressBar;
using cppfabric::utilities::ProgressBarOptions;

namespace {

/// Everything readable from `fd` now (non-blocking).
std::string drain(int fd) {
  ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
  std::string out;
  char buffer[4096];
  for (;;) {
    const ssize_t n = ::read(fd, buffer, sizeof(buffer));
    if (n > 0) {
      out.append(buffer, static_cast<std::size_t>(n));
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else {
      break;
    }
  }
  return out;
}

std::vector<std::string> split(const std::string& text, const std::string& separators) {
  std::vector<std::string> parts;
  std::string part;
  for (char c : text) {
    if (separators.find(c) != std::string::npos) {
      if (!part.empty()) parts.push_back(part);
      part.clear();
    } else {
      part += c;
    }
  }
  if (!part.empty()) parts.push_back(part);
  return parts;
}

std::string strip_erase(std::string text) {
  const std::string erase = "\x1b[K";
  for (auto pos = text.find(erase); pos != std::string::npos; pos = text.find(erase)) {
    text.erase(pos, erase.size());
  }
  return text;
}

/// A pipe whose write end is a FILE*.
struct Pipe {
  Pipe() {
    int fds[2];
    if (::pipe(fds) != 0) throw std::runtime_error("pipe failed");
    read_fd = fds[0];
    write = ::fdopen(fds[1], "w");
  }
  ~Pipe() {
    if (write != nullptr) std::fclose(write);
    ::close(read_fd);
  }
  std::string finish() {
    std::fclose(write);
    write = nullptr;
    return drain(read_fd);
  }
  int read_fd = -1;
  std::FILE* write = nullptr;
};

struct FakeClock {
  double now = 100.0;
  std::function<double()> fn() {
    return [this] { return now; };
  }
};

}  // namespace

TEST(ProgressBar, RedrawsInPlaceOnAPseudoTerminal) {
  int master = -1, slave = -1;
  winsize size{};
  size.ws_row = 24;
  size.ws_col = 100;
  ASSERT_EQ(::openpty(&master, &slave, nullptr, nullptr, &size), 0);
  termios mode{};
  ::tcgetattr(slave, &mode);
  ::cfmakeraw(&mode);  // no "\n" -> "\r\n" translation, so the bytes are exactly ours
  ::tcsetattr(slave, TCSANOW, &mode);
  std::FILE* tty = ::fdopen(slave, "w");
  ASSERT_NE(tty, nullptr);

  FakeClock clock;
  std::string output;
  {
    ProgressBar bar(10,
                    {.description = "Epoch 1", .stream = tty, .ascii = true, .clock = clock.fn()});
    EXPECT_TRUE(bar.is_terminal());
    EXPECT_TRUE(bar.enabled());
    for (int i = 1; i <= 10; ++i) {
      clock.now += 0.5;
      bar.set_postfix({{"loss", 1.0 / i}});
      bar.update();
      if (i == 5) output += drain(master);
    }
    bar.close();
    output += drain(master);
  }
  std::fclose(tty);
  ::close(master);

  // 1 initial draw + 10 updates (0.5 s apart > min_interval) + 1 final draw.
  EXPECT_EQ(std::count(output.begin(), output.end(), '\r'), 12) << output;
  ASSERT_FALSE(output.empty());
  EXPECT_EQ(output.back(), '\n');
  const auto frames = split(strip_erase(output), "\r\n");
  ASSERT_EQ(frames.size(), 12u);
  for (const auto& frame : frames) EXPECT_LE(frame.size(), 99u) << frame;  // width 100 - 1
  EXPECT_EQ(frames.front(), "Epoch 1:   0%|" + std::string(62, ' ') + "| 0/10 [00:00<?, ?it/s]");
  EXPECT_EQ(frames[5], "Epoch 1:  50%|" + std::string(22, '#') + std::string(22, ' ') +
                           "| 5/10 [00:02<00:02,  2.00it/s, loss=0.2]");
  EXPECT_EQ(frames.back(),
            "Epoch 1: 100%|" + std::string(43, '#') + "| 10/10 [00:05<00:00,  2.00it/s, loss=0.1]");
}

TEST(ProgressBar, PrintsPlainLinesOnAPipe) {
  Pipe pipe;
  FakeClock clock;
  {
    ProgressBar bar(10, {.description = "Epoch 2",
                         .stream = pipe.write,
                         .print_every_n = 4,
                         .print_every_secs = 0,
                         .clock = clock.fn()});
    EXPECT_FALSE(bar.is_terminal());
    for (int i = 1; i <= 10; ++i) {
      clock.now += 1.0;
      bar.update();
    }
  }  // the destructor closes the bar: the last line
  const std::string output = pipe.finish();
  EXPECT_EQ(output.find('\r'), std::string::npos);
  EXPECT_EQ(output.find('\x1b'), std::string::npos);
  EXPECT_EQ(output,
            "Epoch 2:  40% 4/10 [00:04<00:06,  1.00it/s]\n"
            "Epoch 2:  80% 8/10 [00:08<00:02,  1.00it/s]\n"
            "Epoch 2: 100% 10/10 [00:10<00:00,  1.00it/s]\n");
}

TEST(ProgressBar, PlainLinesByTimeAndByDefaultTenth) {
  FakeClock clock;
  {
    Pipe pipe;
    ProgressBar bar(
        std::nullopt,
        {.description = "Steps", .stream = pipe.write, .print_every_secs = 5, .clock = clock.fn()});
    for (int i = 1; i <= 12; ++i) {
      clock.now += 1.0;
      bar.update();
    }
    bar.set_postfix_str("lr=0.1");
    bar.close();
    bar.close();  // once only
    EXPECT_EQ(pipe.finish(),
              "Steps: 5it [00:05,  1.00it/s]\n"
              "Steps: 10it [00:10,  1.00it/s]\n"
              "Steps: 12it [00:12,  1.00it/s, lr=0.1]\n");
  }
  {
    Pipe pipe;
    ProgressBar bar(100, {.stream = pipe.write, .print_every_secs = 0, .clock = clock.fn()});
    for (int i = 1; i <= 100; ++i) {
      clock.now += 4.0;
      bar.update();
    }
    bar.close();
    const std::string output = pipe.finish();
    EXPECT_EQ(std::count(output.begin(), output.end(), '\n'), 10) << output;  // every 10 steps
    EXPECT_NE(output.find(" 10% 10/100 [00:40<06:00,  4.00s/it]\n"), std::string::npos) << output;
  }
}

TEST(ProgressBar, SilentOnOtherRanksAndWhenDisabled) {
  Pipe pipe;
  {
    cppfabric::utilities::set_rank(1, 2);
    ProgressBar bar(5, {.stream = pipe.write});
    EXPECT_FALSE(bar.enabled());
    bar.update(5);
    bar.close();
    cppfabric::utilities::set_rank(0, 1);
  }
  {
    ProgressBar bar(5, {.stream = pipe.write, .disable = true});
    bar.update(5);
  }
  EXPECT_EQ(pipe.finish(), "");
}

TEST(ProgressBar, FormatsLikeTqdm) {
  EXPECT_EQ(ProgressBar::format_interval(0), "00:00");
  EXPECT_EQ(ProgressBar::format_interval(65.9), "01:05");
  EXPECT_EQ(ProgressBar::format_interval(3723), "1:02:03");
  FakeClock clock;
  ProgressBar bar(
      8,
      {.description = "d", .terminal = true, .ascii = false, .disable = true, .clock = clock.fn()});
  clock.now += 2;
  bar.update(3);
  EXPECT_DOUBLE_EQ(bar.rate(), 1.5);
  EXPECT_DOUBLE_EQ(bar.elapsed(), 2.0);
  const std::string line = bar.format_line(60);
  EXPECT_NE(line.find("\xe2\x96\x88"), std::string::npos) << line;  // a full Unicode block
  EXPECT_EQ(line.substr(0, 8), "d:  38%|");
  EXPECT_NE(line.find("| 3/8 [00:02<00:03,  1.50it/s]"), std::string::npos) << line;
  EXPECT_EQ(bar.format_plain(), "d:  38% 3/8 [00:02<00:03,  1.50it/s]");
  EXPECT_EQ(bar.format_line(12), "d:  38% 3/8 ");  // too narrow for a bar: cut
  bar.reset(4);
  EXPECT_EQ(bar.count(), 0);
  EXPECT_EQ(bar.total(), 4);
}

TEST(ProgressBar, RejectsBadArguments) {
  EXPECT_THROW_WITH(ProgressBar(-1), std::invalid_argument, "total=-1");
  EXPECT_THROW_WITH(ProgressBar(3, {.stream = nullptr}), std::invalid_argument, "stream");
  EXPECT_THROW_WITH(ProgressBar(3, {.print_every_n = -2}), std::invalid_argument,
                    "print_every_n=-2");
  ProgressBar bar(3, {.disable = true});
  EXPECT_THROW_WITH(bar.update(-1), std::invalid_argument, "n=-1");
}
