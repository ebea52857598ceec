// The launcher's rules, one function at a time: Slurm's list syntax, how many ranks on which hosts, the command
// line, the arguments of a restart, and what ddprun decides after a job ends.
#include "ddprun/launch_contract.h"
#include "launcher/child_processes.h"
#include "launcher/hostlist.h"
#include "launcher/job_shape.h"
#include "launcher/launch_command.h"
#include "launcher/launch_options.h"
#include "launcher/ready_channel.h"
#include "launcher/supervisor.h"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

namespace {

using namespace ddprun::launcher;
using Strings = std::vector<std::string>;

std::string hosts_text(const JobShape& shape) {
  std::string text;
  for (const Host& h : shape.hosts) text += (text.empty() ? "" : ",") + h.name + ":" + std::to_string(h.slots);
  return text;
}

ShapeRequest no_gpus() {
  ShapeRequest request;
  request.device_dir = "/nonexistent";
  request.local_cores = 2;
  return request;
}

TEST(Hostlist, ExpandsRangesListsAndPaddingAsSlurmWritesThem) {
  EXPECT_EQ(expand_hostlist("gpu[01-03,07],login1"), (Strings{"gpu01", "gpu02", "gpu03", "gpu07", "login1"}));
  EXPECT_EQ(expand_hostlist("node7"), (Strings{"node7"}));
  EXPECT_EQ(expand_hostlist("n[8-10]"), (Strings{"n8", "n9", "n10"}));
  EXPECT_EQ(expand_hostlist("rack[1-2]-n[1-2]"), (Strings{"rack1-n1", "rack1-n2", "rack2-n1", "rack2-n2"}));
  EXPECT_EQ(expand_hostlist("a[098-101]"), (Strings{"a098", "a099", "a100", "a101"}));
}

TEST(Hostlist, RefusesWhatItCannotReadWithTheList) {
  for (const char* bad : {"gpu[01-03", "gpu]", "gpu[3-1]", "gpu[a-b]", "a,,b", "gpu[]"}) {
    try {
      expand_hostlist(bad);
      ADD_FAILURE() << bad << " was accepted";
    } catch (const std::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find(bad), std::string::npos) << e.what();
    }
  }
}

TEST(Hostlist, ExpandsTasksPerNode) {
  EXPECT_EQ(expand_tasks_per_node("2(x3),1"), (std::vector<int>{2, 2, 2, 1}));
  EXPECT_EQ(expand_tasks_per_node("4"), (std::vector<int>{4}));
  EXPECT_THROW(expand_tasks_per_node("2(3)"), std::invalid_argument);
  EXPECT_THROW(expand_tasks_per_node("x"), std::invalid_argument);
}

TEST(JobShape, CountsVisibleDevicesAsCudaDoes) {
  EXPECT_EQ(count_visible_devices("0,1,2,3"), 4);
  EXPECT_EQ(count_visible_devices("GPU-8a2f,GPU-77c1"), 2);
  EXPECT_EQ(count_visible_devices("0,-1,2"), 1);  // CUDA stops at the first invalid entry
  EXPECT_EQ(count_visible_devices(""), 0);
  EXPECT_EQ(count_visible_devices("NoDevFiles"), 0);
}

TEST(JobShape, CountsTheNvidiaDevicesPresent) {
  char dir[] = "/tmp/ddprun_devXXXXXX";
  ASSERT_NE(mkdtemp(dir), nullptr);
  for (const char* name : {"nvidia0", "nvidia1", "nvidia2", "nvidiactl", "nvidia-uvm", "null"})
    std::ofstream(std::string(dir) + "/" + name).put('x');
  EXPECT_EQ(count_gpu_devices(dir), 3);
  ShapeRequest request = no_gpus();
  request.device_dir = dir;
  const JobShape shape = plan_job(request, {});
  EXPECT_EQ(shape.ranks, 3);
  EXPECT_NE(shape.reason.find("3 GPUs per node (the GPUs in " + std::string(dir) + ")"), std::string::npos)
      << shape.reason;
  // In a Slurm job the devices it did not ask for are not its own: the allocation counts.
  EXPECT_EQ(plan_job(request, {{"SLURM_JOB_ID", "1"}, {"SLURM_NTASKS", "2"}}).ranks, 2);
  std::system(("rm -rf " + std::string(dir)).c_str());
}

TEST(JobShape, FollowsTheOrderOfSources) {
  ShapeRequest request = no_gpus();
  EXPECT_EQ(plan_job(request, {}).ranks, 1);
  EXPECT_TRUE(plan_job(request, {}).hosts.empty());
  request.ranks = 5;
  const JobShape forced = plan_job(request, {{"CUDA_VISIBLE_DEVICES", "0,1"}, {"SLURM_NTASKS", "8"}});
  EXPECT_EQ(forced.ranks, 5);         // --np wins
  EXPECT_TRUE(forced.oversubscribe);  // 5 ranks, 2 cores, all here
  request.ranks = 0;
  EXPECT_EQ(plan_job(request, {{"CUDA_VISIBLE_DEVICES", "0,1"}, {"SLURM_NTASKS", "8"}}).ranks, 2);
  EXPECT_EQ(plan_job(request, {{"SLURM_NTASKS", "8"}}).ranks, 8);
  EXPECT_EQ(plan_job(request, {{"SLURM_JOB_NUM_NODES", "3"}, {"SLURM_NTASKS_PER_NODE", "2"}}).ranks, 6);
  EXPECT_EQ(plan_job(request, {{"SLURM_TASKS_PER_NODE", "2(x2),1"}}).ranks, 5);
  request.gpus_per_node = 4;
  EXPECT_EQ(plan_job(request, {{"CUDA_VISIBLE_DEVICES", "0,1"}}).ranks, 4);  // --gpus-per-node wins
}

TEST(JobShape, PlacesRanksOnTheHostsGiven) {
  ShapeRequest request = no_gpus();
  request.hosts = "a:2,b:3";
  JobShape shape = plan_job(request, {{"CUDA_VISIBLE_DEVICES", "0"}});
  EXPECT_EQ(shape.ranks, 5);  // the slots given win over the GPU count
  EXPECT_EQ(hosts_text(shape), "a:2,b:3");
  EXPECT_FALSE(shape.oversubscribe);
  request.hosts = "a,b,c";
  EXPECT_EQ(hosts_text(plan_job(request, {{"CUDA_VISIBLE_DEVICES", "0,1"}})), "a:2,b:2,c:2");
  EXPECT_EQ(plan_job(request, {{"CUDA_VISIBLE_DEVICES", "0,1"}}).ranks, 6);
  EXPECT_EQ(plan_job(request, {}).ranks, 3);  // one per host
  request.ranks = 7;
  EXPECT_EQ(hosts_text(plan_job(request, {})), "a:3,b:3,c:3");
  request.ranks = 7;
  request.hosts = "a:2,b:2";
  try {
    plan_job(request, {});
    ADD_FAILURE() << "7 ranks placed on 4 slots";
  } catch (const std::invalid_argument& e) {
    EXPECT_STREQ(e.what(), "7 ranks do not fit the 4 slots of -H; give fewer ranks (--np) or more slots (HOST:SLOTS)");
  }
  EXPECT_THROW(parse_hosts("a:0"), std::invalid_argument);
  EXPECT_THROW(parse_hosts(":2"), std::invalid_argument);
}

TEST(JobShape, ReadsOpenMpiHostfiles) {
  const std::string path = "/tmp/ddprun_hostfile_test";
  std::ofstream(path) << "# cluster\nnode1 slots=4 max_slots=8\n\nnode2 slots=4  # spare\n";
  const std::vector<Host> hosts = read_hostfile(path);
  ASSERT_EQ(hosts.size(), 2u);
  EXPECT_EQ(hosts[1].name, "node2");
  EXPECT_EQ(hosts[1].slots, 4);
  ShapeRequest request = no_gpus();
  request.hostfile = path;
  const JobShape shape = plan_job(request, {});
  EXPECT_EQ(shape.ranks, 8);
  EXPECT_EQ(shape.hostfile, path);
  // Without slots= mpirun would count the host's cores: the planned slots go to mpirun with -H instead.
  std::ofstream(path) << "node1\nnode2\n";
  request.gpus_per_node = 4;
  const JobShape planned = plan_job(request, {});
  EXPECT_EQ(planned.ranks, 8);
  EXPECT_EQ(planned.hostfile, "");
  EXPECT_EQ(hosts_text(planned), "node1:4,node2:4");
  std::remove(path.c_str());
  EXPECT_THROW(read_hostfile(path), std::invalid_argument);
}

// The message plan_job or read_hostfile throws, or "accepted".
template <typename F>
std::string refusal(F&& f) {
  try {
    f();
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "accepted";
}

TEST(JobShape, ReadsOnlyASmallRegularFileAsHostfile) {
  // /dev/zero grew ddprun to 2.9 GB and never returned; a folder "named no host".
  EXPECT_EQ(refusal([] { read_hostfile("/dev/zero"); }),
            "--hostfile '/dev/zero' is not a regular file (a device, pipe or socket); give the path of a file");
  EXPECT_EQ(refusal([] { read_hostfile("/tmp"); }), "--hostfile '/tmp' is a folder; give the path of a file");
  const std::string fifo = "/tmp/ddprun_hostfile_fifo_" + std::to_string(getpid());
  std::remove(fifo.c_str());
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  EXPECT_EQ(refusal([&] { read_hostfile(fifo); }),  // and without waiting for a writer
            "--hostfile '" + fifo + "' is not a regular file (a device, pipe or socket); give the path of a file");
  std::remove(fifo.c_str());
  const std::string big = "/tmp/ddprun_hostfile_big_" + std::to_string(getpid());
  {
    std::ofstream out(big);
    for (int i = 0; i < 200000; ++i) out << "node" << i << " slots=1\n";
  }
  EXPECT_EQ(refusal([&] { read_hostfile(big); }),
            "--hostfile '" + big + "' is larger than 1024 KiB, far more than such a file needs; check the path");
  std::remove(big.c_str());
}

TEST(JobShape, RefusesMoreRanksThanTheHostsCanHold) {
  // --np 100000 made mpirun flood the node with "system limit" errors, hang, and crash on SIGTERM.
  ShapeRequest request = no_gpus();
  request.ranks = 100000;
  EXPECT_EQ(refusal([&] { plan_job(request, {}); }),
            "100000 ranks on this node's 2 cores is more than 32 (16 per core), which would flood it; give fewer ranks "
            "(--np) or name more hosts (-H)");
  request.ranks = 32;  // oversubscribed, within the factor: started
  EXPECT_TRUE(plan_job(request, {}).oversubscribe);
  request.ranks = 0;
  request.hosts = "a:2000,b:2";
  EXPECT_EQ(refusal([&] { plan_job(request, {}); }),
            "-H gives host a 2000 slots, more than the 1024 ranks ddprun starts on one host; give one rank per GPU (or "
            "core)");
  request.hosts = "a:8";
  request.process_limit = 4;
  EXPECT_EQ(refusal([&] { plan_job(request, {}); }),
            "8 ranks exceed this user's process limit (ulimit -u 4); give fewer ranks (--np)");
}

TEST(JobShape, TakesHostsAndSlotsFromTheSlurmAllocation) {
  const Environment slurm{{"SLURM_JOB_ID", "9"},
                          {"SLURM_JOB_NODELIST", "gpu[1-2]"},
                          {"SLURM_TASKS_PER_NODE", "3,1"},
                          {"SLURM_NTASKS", "4"}};
  JobShape shape = plan_job(no_gpus(), slurm);
  EXPECT_EQ(shape.ranks, 4);
  EXPECT_EQ(hosts_text(shape), "gpu1:3,gpu2:1");
  Environment with_gpus = slurm;
  with_gpus["CUDA_VISIBLE_DEVICES"] = "0,1,2,3";
  shape = plan_job(no_gpus(), with_gpus);
  EXPECT_EQ(shape.ranks, 8);
  EXPECT_EQ(hosts_text(shape), "gpu1:4,gpu2:4");
  EXPECT_NE(shape.reason.find("8 ranks: 4 GPUs per node (CUDA_VISIBLE_DEVICES) x 2 nodes on 2 hosts (the Slurm "
                              "allocation)"),
            std::string::npos)
      << shape.reason;
}

LaunchOptions options_for(const Strings& args) {
  std::vector<const char*> argv{"ddprun"};
  for (const std::string& a : args) argv.push_back(a.c_str());
  return parse_launch_options(static_cast<int>(argv.size()), argv.data());
}

TEST(LaunchCommand, BuildsMpirunWithTheRanksEnvironment) {
  const LaunchOptions options = options_for({"-x", "A=1", "-x", "HOME", "-x", "GONE", "--", "prog", "--lr", "1"});
  JobShape shape;
  shape.ranks = 4;
  shape.hosts = {{"a", 2}, {"b", 2}};
  const Environment env{{"PATH", "/bin"},         {"HOME", "/root"},        {"NCCL_IB_HCA", "mlx5"},
                        {"OMP_NUM_THREADS", "4"}, {"DDPRUN_PROGRESS", "0"}, {"SECRET", "x"}};
  EXPECT_EQ(shell_line(build_launch_command(options, shape, env, 0)),
            "mpirun -np 4 --bind-to none --map-by slot -H a:2,b:2 -x DDPRUN_PROGRESS -x NCCL_IB_HCA -x "
            "OMP_NUM_THREADS -x PATH -x A=1 -x HOME prog --lr 1");
}

TEST(LaunchCommand, PassesTheRshAgentToMpirun) {
  JobShape shape;
  shape.ranks = 4;
  shape.hosts = {{"a", 2}, {"b", 2}};
  EXPECT_EQ(
      shell_line(build_launch_command(options_for({"--rsh-agent", "/usr/bin/true -p 22", "--", "prog"}), shape, {}, 0)),
      "mpirun -np 4 --bind-to none --map-by slot --mca plm_rsh_agent '/usr/bin/true -p 22' -H a:2,b:2 prog");
  EXPECT_NO_THROW(options_for({"--rsh-agent", "ssh", "--", "prog"}));  // a name: mpirun finds it on PATH
  EXPECT_THROW(options_for({"--rsh-agent", "/nonexistent/agent", "--", "prog"}), UsageError);
  EXPECT_THROW(options_for({"--rsh-agent", "/etc/passwd", "--", "prog"}), UsageError);
  EXPECT_THROW(options_for({"--rsh-agent", "", "--", "prog"}), UsageError);
  EXPECT_THROW(options_for({"--launcher", "srun", "--rsh-agent", "ssh", "--", "prog"}), UsageError);
}

TEST(LaunchCommand, BuildsSrunWithPmix) {
  const LaunchOptions options = options_for({"--launcher", "srun", "-x", "A=1", "--", "prog"});
  JobShape shape;
  shape.ranks = 4;
  shape.hosts = {{"a", 2}, {"b", 2}};
  EXPECT_EQ(shell_line(build_launch_command(options, shape, {}, 0)),
            "srun --mpi=pmix --ntasks=4 --nodelist=a,b --ntasks-per-node=2 --cpu-bind=none --kill-on-bad-exit=1 "
            "--export=ALL,A=1 prog");
  EXPECT_THROW(build_launch_command(options_for({"--launcher", "srun", "-x", "A=1,2", "--", "p"}), shape, {}, 0),
               UsageError);
}

TEST(LaunchCommand, RestartsResumeAuto) {
  EXPECT_EQ(with_resume_auto({"--lr", "1", "--resume", "a.pth", "--epochs", "3"}),
            (Strings{"--lr", "1", "--epochs", "3", "--resume", "auto"}));
  EXPECT_EQ(with_resume_auto({"--resume=a.pth"}), (Strings{"--resume", "auto"}));
  EXPECT_EQ(with_resume_auto({}), (Strings{"--resume", "auto"}));
  const LaunchOptions options = options_for({"--", "prog", "--resume", "x"});
  JobShape shape;
  EXPECT_EQ(shell_line(build_launch_command(options, shape, {}, 1)),
            "mpirun -np 1 --bind-to none --map-by slot prog --resume auto");
}

TEST(LaunchCommand, QuotesForTheShell) {
  EXPECT_EQ(shell_line({"a b", "it's", "plain", "$HOME", ""}), "'a b' 'it'\\''s' plain '$HOME' ''");
}

TEST(LaunchOptions, RefusesBadFlagsWithOneLine) {
  auto message = [](const Strings& args) -> std::string {
    try {
      options_for(args);
    } catch (const UsageError& e) {
      return e.what();
    }
    return "accepted";
  };
  EXPECT_EQ(message({"--np", "0", "--", "p"}), "--np '0' is not a positive whole number");
  EXPECT_EQ(message({"--restart-delay", "-1", "--", "p"}),
            "--restart-delay '-1' is not a number of seconds (0 or more)");
  EXPECT_EQ(message({"--restart-delay", "nan", "--", "p"}),
            "--restart-delay 'nan' is not a number of seconds (0 or more)");
  EXPECT_EQ(message({"--signal-hold", "inf", "--", "p"}),
            "--signal-hold 'inf' is not a number of seconds from 0 to 3600");
  EXPECT_EQ(options_for({"--signal-hold", "2.5", "--", "p"}).signal_hold, 2.5);
  EXPECT_EQ(message({"-H", "a", "--hostfile", "f", "--", "p"}), "-H and --hostfile both name hosts; give one of them");
  EXPECT_EQ(message({"--bogus"}),
            "unknown option '--bogus'; put the program after '--' (ddprun --np 2 -- ddptrain ...)");
  EXPECT_EQ(message({"--np"}), "--np needs a value; see ddprun --help");
  EXPECT_EQ(message({"-x", "=1", "--", "p"}), "-x '=1' names no variable; write -x VAR[=VALUE]");
  const LaunchOptions o = options_for({"--srun", "/opt/srun", "--max-restarts", "3", "--no-requeue", "--", "p", "--x"});
  EXPECT_EQ(o.launcher, "srun");
  EXPECT_EQ(o.launcher_path, "/opt/srun");
  EXPECT_EQ(o.max_restarts, 3);
  EXPECT_FALSE(o.requeue);
  EXPECT_EQ(o.program, (Strings{"p", "--x"}));
}

TEST(Supervisor, DecidesWhatComesAfterAJob) {
  EXPECT_EQ(decide({false, 0}, false, 0, 3), Decision::Finished);
  EXPECT_EQ(decide({false, 75}, false, 0, 3), Decision::Preempted);
  EXPECT_EQ(decide({false, 75}, true, 0, 3), Decision::Preempted);  // preempted by the signal ddprun passed on
  EXPECT_EQ(decide({false, 137}, true, 0, 3), Decision::Stopped);   // someone asked it to stop
  // srun --kill-on-bad-exit ended the other node's ranks as the first ones exited with 75 after saving
  EXPECT_EQ(decide({false, 143}, true, 0, 3, /*ranks_preempted=*/true), Decision::Preempted);
  EXPECT_EQ(decide({false, 2}, false, 0, 3), Decision::Final);      // bad flags
  EXPECT_EQ(decide({false, 3}, false, 0, 3), Decision::Final);      // failed before training started
  EXPECT_EQ(decide({false, 4}, false, 0, 3), Decision::Final);      // diverged: a restart would repeat it
  EXPECT_EQ(decide({false, 137}, false, 0, 3), Decision::Restart);  // a rank was killed
  EXPECT_EQ(decide({true, SIGSEGV}, false, 2, 3), Decision::Restart);
  EXPECT_EQ(decide({false, 1}, false, 3, 3), Decision::GiveUp);
  EXPECT_EQ(decide({false, 1}, false, 0, 0), Decision::GiveUp);
  EXPECT_EQ(describe({false, 137}), "exit code 137 (a rank was killed by SIGKILL)");
  EXPECT_EQ(describe({true, SIGTERM}), "the launcher was killed by SIGTERM");
  EXPECT_EQ(exit_code_of({true, SIGTERM}), 143);
  SupervisorOptions options;
  options.restart_delay = 1;
  EXPECT_EQ(restart_delay(options, 0), 1);
  EXPECT_EQ(restart_delay(options, 3), 8);
  EXPECT_EQ(restart_delay(options, 10), kMaxRestartDelay);
}

// As a subreaper, ddprun inherits a grandchild whose parent exited (a rank whose mpirun exited) and ends it, with
// SIGKILL when it ignores SIGTERM, before end_leftover_processes returns.
TEST(ChildProcesses, LeftoversAreInheritedAndEnded) {
  ASSERT_TRUE(become_subreaper());
  int ready[2];
  ASSERT_EQ(pipe(ready), 0);
  const pid_t child = fork();
  if (child == 0) {
    if (fork() == 0) {  // the grandchild: ignores SIGTERM, outlives its parent
      std::signal(SIGTERM, SIG_IGN);
      ssize_t ignored = write(ready[1], "x", 1);
      (void)ignored;
      for (;;) pause();
    }
    _exit(0);
  }
  char byte = 0;
  ASSERT_EQ(read(ready[0], &byte, 1), 1);
  waitpid(child, nullptr, 0);
  ASSERT_EQ(children_of(getpid()).size(), 1u);  // the grandchild, now ours
  const LeftoverReport report = end_leftover_processes(0.2);
  EXPECT_EQ(report.processes, 1);
  EXPECT_TRUE(report.killed);
  EXPECT_TRUE(report.complete);
  EXPECT_GE(report.seconds, 0.2);
  EXPECT_TRUE(children_of(getpid()).empty());
  close(ready[0]);
  close(ready[1]);
}

// The ready channel takes the ready and aborting messages from a process of this user, and nothing else.
TEST(ReadyChannel, TakesTheRanksReport) {
  ReadyChannel channel;
  ASSERT_GE(channel.fd(), 0);
  ASSERT_EQ(channel.address().rfind("@ddprun-", 0), 0u) << channel.address();
  EXPECT_FALSE(channel.receive().ready);
  auto send = [&](const std::string& text) {
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    const std::string name = channel.address().substr(1);
    std::memcpy(address.sun_path + 1, name.data(), name.size());
    const int fd = socket(AF_UNIX, SOCK_DGRAM, 0);
    sendto(fd, text.data(), text.size(), 0, reinterpret_cast<const sockaddr*>(&address),
           static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + name.size()));
    close(fd);
  };
  send("hello");
  send(std::string(ddprun::kReadyMessage) + "x");
  const ReadyChannel::Reports nothing = channel.receive();
  EXPECT_FALSE(nothing.ready || nothing.aborting);
  send(ddprun::kReadyMessage);
  const ReadyChannel::Reports ready = channel.receive();
  EXPECT_TRUE(ready.ready);
  EXPECT_FALSE(ready.aborting);
  EXPECT_FALSE(channel.receive().ready);  // read once
  send(ddprun::kAbortingMessage);
  const ReadyChannel::Reports aborting = channel.receive();
  EXPECT_TRUE(aborting.aborting);
  EXPECT_FALSE(aborting.ready);
}

TEST(Supervisor, RequeuesTheRightSlurmJob) {
  EXPECT_EQ(slurm_job_to_requeue({}), "");
  EXPECT_EQ(slurm_job_to_requeue({{"SLURM_JOB_ID", "12"}}), "12");
  EXPECT_EQ(slurm_job_to_requeue({{"SLURM_JOB_ID", "12"}, {"SLURM_ARRAY_JOB_ID", "10"}, {"SLURM_ARRAY_TASK_ID", "2"}}),
            "10_2");
}

}  // namespace
