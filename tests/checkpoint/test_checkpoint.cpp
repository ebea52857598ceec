// Tests of the checkpoint module: Value, round trips through save()/load() (every dtype, shared and non-contiguous
// views, nested containers, big and negative ints), refusal of unsafe or broken pickles and files with clear
// messages, atomic saving, and interop with Python's torch.save/torch.load through tests/checkpoint/interop.py.
#include "checkpoint/async_saver.h"
#include "checkpoint/atomic_file.h"
#include "checkpoint/checkpoint_folder.h"
#include "checkpoint/module_state.h"
#include "checkpoint/pickle_reader.h"
#include "checkpoint/pickle_writer.h"
#include "checkpoint/torch_file.h"
#include "checkpoint/value.h"

#include <ATen/ops/arange.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>
#include <caffe2/serialize/inline_container.h>
#include <gtest/gtest.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/linear.h>

#include <fcntl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace ddprun::checkpoint {
namespace {

namespace fs = std::filesystem;

const char* const kPython = "/usr/bin/python3";

// A string literal's bytes, NULs included.
template <size_t N>
std::string B(const char (&literal)[N]) {
  return std::string(literal, N - 1);
}

// The message of the CheckpointError `f` throws ("" and a test failure when it throws none).
std::string checkpoint_error(const std::function<void()>& f) {
  try {
    f();
  } catch (const CheckpointError& e) {
    return e.what();
  }
  ADD_FAILURE() << "no CheckpointError thrown";
  return "";
}

std::string runtime_error(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  ADD_FAILURE() << "no std::runtime_error thrown";
  return "";
}

// A loader for read_pickle tests that never need a storage.
at::Tensor no_storage(const std::string& key, const std::string&, c10::ScalarType, int64_t) {
  throw std::runtime_error("unexpected storage " + key);
}

Value unpickle(const std::string& bytes, const StorageLoader& loader = no_storage) {
  return read_pickle(bytes.data(), bytes.size(), loader);
}

bool same_storage(const at::Tensor& a, const at::Tensor& b) {
  return a.storage().data_ptr().get() == b.storage().data_ptr().get();
}

std::vector<std::string> records_of(const std::string& path) {
  caffe2::serialize::PyTorchStreamReader reader(path);
  return reader.getAllRecords();
}

// The tensors interop.py's dtype_tensors() builds.
Value dtype_tensors() {
  const auto a = [](int64_t n) { return at::arange(n, at::kLong); };
  return Value::ordered_dict({
      {"float32", a(6).to(at::kFloat).mul(0.25).sub(0.5).reshape({2, 3})},
      {"float64", a(5).to(at::kDouble).div(3)},
      {"float16", a(4).to(at::kFloat).mul(0.5).to(at::kHalf)},
      {"bfloat16", a(4).to(at::kFloat).mul(1.5).to(at::kBFloat16)},
      {"int8", a(6).sub(3).to(at::kChar)},
      {"int16", a(4).mul(1000).sub(2000).to(at::kShort)},
      {"int32", a(4).mul(100000).to(at::kInt)},
      {"int64", a(3).sub(1).mul(int64_t{1} << 40)},
      {"uint8", a(4).mul(80).to(at::kByte)},
      {"bool", a(4).remainder(2).eq(0)},
  });
}

at::Tensor scalar_long(int64_t v) { return at::empty({}, at::kLong).fill_(v); }

Value make_state_dict() {
  return Value::ordered_dict({
      {"layer.weight", at::arange(6, at::kFloat).div(10).reshape({3, 2})},
      {"layer.bias", at::arange(3, at::kFloat)},
      {"bn.num_batches_tracked", scalar_long(5)},
  });
}

// What interop.py's make_cpp_object() builds.
Value make_cpp_object() {
  const at::Tensor base = at::arange(12, at::kFloat);
  Value ints = Value::list();
  for (int64_t i :
       {int64_t{0}, int64_t{1}, int64_t{-1}, int64_t{255}, int64_t{256}, int64_t{65535}, int64_t{65536},
        int64_t{INT32_MAX}, int64_t{INT32_MIN}, int64_t{INT32_MAX} + 1, int64_t{INT32_MIN} - 1, int64_t{1} << 40,
        -(int64_t{1} << 40), std::numeric_limits<int64_t>::max(), std::numeric_limits<int64_t>::min()}) {
    ints.append(i);
  }
  const double inf = std::numeric_limits<double>::infinity();
  return Value::dict({
      {"origin", "cpp"},
      {"tensors", dtype_tensors()},
      {"view_row", base.view({3, 4}).select(0, 1)},
      {"view_t", base.view({3, 4}).t()},
      {"scalar", scalar_long(7)},
      {"empty", at::empty({0, 3}, at::kFloat)},
      {"ints", ints},
      {"floats", Value::list({0.0, -0.0, 1.5, -2.25, 1e300, inf, -inf})},
      {"strings", Value::list({"", "ascii", "h\xc3\xa9llo w\xc3\xb6rld", "\xe2\x9c\x93 \xf0\x9d\x94\x98nicode"})},
      {"none", nullptr},
      {"true", true},
      {"false", false},
      {"nested", Value::dict({
                     {"list", Value::list({1, Value::list({2, Value::list({3, Value::list()})})})},
                     {"tuple", Value::tuple({1, "two", 3.0})},
                     {"tuple4", Value::tuple({1, 2, 3, 4})},
                     {"empty_tuple", Value::tuple()},
                     {"empty_dict", Value::dict()},
                     {"int_keys", Value::dict({{0, "zero"}, {1, "one"}})},
                     {"od", Value::ordered_dict({{"b", 1}, {"a", 2}})},
                 })},
      {"state_dict", make_state_dict()},
  });
}

class CheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char pattern[] = "/tmp/ddprun_checkpoint_XXXXXX";
    ASSERT_NE(::mkdtemp(pattern), nullptr);
    dir_ = pattern;
  }
  void TearDown() override {
    std::error_code ec;
    fs::permissions(dir_, fs::perms::owner_all, fs::perm_options::add, ec);
    fs::remove_all(dir_, ec);
  }
  std::string path(const std::string& name) const { return dir_ + "/" + name; }
  Value round_trip(const Value& v) {
    save(v, path("round_trip.pt"));
    return load(path("round_trip.pt"));
  }
  std::vector<std::string> files() const {
    std::vector<std::string> r;
    for (const auto& e : fs::directory_iterator(dir_)) r.push_back(e.path().filename().string());
    std::sort(r.begin(), r.end());
    return r;
  }
  void write_file(const std::string& name, const std::string& bytes) const {
    std::ofstream(path(name), std::ios::binary) << bytes;
  }
  std::string read_file(const std::string& name) const {
    std::ifstream in(path(name), std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }
  // A zip written the way torch.save writes one, with the given records.
  void write_zip(const std::string& name, const std::vector<std::pair<std::string, std::string>>& records) const {
    caffe2::serialize::PyTorchStreamWriter writer(path(name));
    for (const auto& [record, bytes] : records) writer.writeRecord(record, bytes.data(), bytes.size());
    writer.writeEndOfFile();
  }

  std::string dir_;
};

// ---------------------------------------------------------------------------------------------------------------
// Value

TEST(ValueTest, KindsAndAccessors) {
  EXPECT_TRUE(Value().is_none());
  EXPECT_TRUE(Value(nullptr).is_none());
  EXPECT_EQ(Value(true).to_bool(), true);
  EXPECT_EQ(Value(3).to_int(), 3);
  EXPECT_EQ(Value(int64_t{1} << 40).to_int(), int64_t{1} << 40);
  EXPECT_EQ(Value(2.5).to_double(), 2.5);
  EXPECT_EQ(Value(4).to_double(), 4.0);  // an int reads as a float, as in Python
  EXPECT_EQ(Value("s").to_string(), "s");
  EXPECT_TRUE(Value(at::arange(3)).is_tensor());
  EXPECT_EQ(Value::list().kind(), Value::Kind::List);
  EXPECT_EQ(Value::tuple().kind(), Value::Kind::Tuple);
  EXPECT_EQ(Value::dict().kind(), Value::Kind::Dict);
  EXPECT_EQ(Value::ordered_dict().kind(), Value::Kind::OrderedDict);
  EXPECT_STREQ(Value().kind_name(), "NoneType");
  EXPECT_STREQ(Value::ordered_dict().kind_name(), "OrderedDict");
  EXPECT_STREQ(Value(at::arange(3)).kind_name(), "Tensor");
}

TEST(ValueTest, TypeErrorsNameExpectedAndActual) {
  EXPECT_EQ(runtime_error([] { Value("x").to_int(); }), "expected int, got str");
  EXPECT_EQ(runtime_error([] { Value(1).to_string(); }), "expected str, got int");
  EXPECT_EQ(runtime_error([] { Value(true).to_int(); }), "expected int, got bool");
  EXPECT_EQ(runtime_error([] { Value("x").to_double(); }), "expected float, got str");
  EXPECT_EQ(runtime_error([] { Value().to_tensor(); }), "expected Tensor, got NoneType");
  EXPECT_EQ(runtime_error([] { Value::list().entries(); }), "expected dict or OrderedDict, got list");
  EXPECT_EQ(runtime_error([] { Value::dict().items(); }), "expected list or tuple, got dict");
  EXPECT_EQ(runtime_error([] { Value::tuple().append(1); }), "expected list, got tuple");
  EXPECT_EQ(runtime_error([] { Value::dict().at("lr"); }), "missing key 'lr'");
  EXPECT_EQ(runtime_error([] { Value::dict().at(3); }), "missing key 3");
}

TEST(ValueTest, DictsAndListsAreSharedAndOrdered) {
  Value d = Value::dict();
  d.set("b", 1).set("a", 2).set(0, "zero").set("b", 3);  // replacing keeps the position
  ASSERT_EQ(d.entries().size(), 3u);
  EXPECT_EQ(d.entries()[0].first.to_string(), "b");
  EXPECT_EQ(d.at("b").to_int(), 3);
  EXPECT_EQ(d.at(0).to_string(), "zero");
  EXPECT_EQ(d.find("zero"), nullptr);
  Value copy = d;  // copies share the dict, as Python names do
  copy.set("c", 4);
  EXPECT_NE(d.find("c"), nullptr);
  Value l = Value::list({1});
  Value holder = Value::list({l, l});
  l.append(2);
  EXPECT_EQ(holder.items()[1].items().size(), 2u);
}

TEST(ValueTest, EqualityIsDeepAndStrictAboutKinds) {
  EXPECT_EQ(Value::list({1, "a", Value::tuple({2.0})}), Value::list({1, "a", Value::tuple({2.0})}));
  EXPECT_NE(Value(1), Value(1.0));
  EXPECT_NE(Value::list({1}), Value::tuple({1}));
  EXPECT_NE(Value::dict({{"a", 1}}), Value::ordered_dict({{"a", 1}}));
  EXPECT_NE(Value::dict({{"a", 1}, {"b", 2}}), Value::dict({{"b", 2}, {"a", 1}}));
  EXPECT_EQ(Value(at::arange(4).view({2, 2}).t().contiguous()), Value(at::arange(4).view({2, 2}).t()));
  EXPECT_NE(Value(at::arange(4)), Value(at::arange(4).to(at::kInt)));
  EXPECT_NE(Value(at::arange(4)), Value(at::arange(4).view({2, 2})));
  const double nan = std::nan("");
  EXPECT_NE(Value(nan), Value(nan));                                              // floats: as Python
  EXPECT_EQ(Value(at::empty({1}).fill_(nan)), Value(at::empty({1}).fill_(nan)));  // tensors: bytes
}

// ---------------------------------------------------------------------------------------------------------------
// Round trips

TEST_F(CheckpointTest, EveryDtypeRoundTrips) {
  const Value tensors = dtype_tensors();
  // Special float values travel bit for bit.
  const double inf = std::numeric_limits<double>::infinity();
  at::Tensor specials = at::empty({6}, at::kDouble);
  double* p = specials.data_ptr<double>();
  p[0] = std::nan("");
  p[1] = -0.0;
  p[2] = inf;
  p[3] = -inf;
  p[4] = std::numeric_limits<double>::denorm_min();
  p[5] = std::numeric_limits<double>::max();
  Value object = Value::dict({{"tensors", tensors},
                              {"specials64", specials},
                              {"specials32", specials.to(at::kFloat)},
                              {"specials16", specials.to(at::kHalf)},
                              {"specialsbf16", specials.to(at::kBFloat16)}});
  const Value loaded = round_trip(object);
  EXPECT_EQ(loaded, object);
  const Value& lt = loaded.at("tensors");
  ASSERT_EQ(lt.kind(), Value::Kind::OrderedDict);
  ASSERT_EQ(lt.entries().size(), 10u);
  for (size_t i = 0; i < 10; ++i) {
    const at::Tensor& want = tensors.entries()[i].second.to_tensor();
    const at::Tensor& got = lt.entries()[i].second.to_tensor();
    SCOPED_TRACE(lt.entries()[i].first.to_string());
    EXPECT_EQ(got.scalar_type(), want.scalar_type());
    EXPECT_EQ(got.sizes(), want.sizes());
    EXPECT_TRUE(got.device().is_cpu());
    EXPECT_FALSE(got.requires_grad());
  }
  EXPECT_TRUE(std::isnan(loaded.at("specials64").to_tensor().data_ptr<double>()[0]));
  EXPECT_TRUE(std::signbit(loaded.at("specials64").to_tensor().data_ptr<double>()[1]));
  EXPECT_EQ(lt.at("int64").to_tensor().data_ptr<int64_t>()[2], int64_t{1} << 40);
}

TEST_F(CheckpointTest, ViewsOfOneStorageStayShared) {
  const at::Tensor base = at::arange(24, at::kFloat);
  const at::Tensor rows = base.view({4, 6}).narrow(0, 1, 2);  // offset 6
  const at::Tensor cols = base.view({4, 6}).t();              // non-contiguous
  const at::Tensor column = base.view({4, 6}).select(1, 2);   // stride 6, offset 2
  const at::Tensor other = at::arange(3, at::kFloat);
  const Value object = Value::dict({{"rows", rows}, {"other", other}, {"cols", cols}, {"column", column}});
  save(object, path("views.pt"));

  // One storage record for the three views (the whole storage), one for `other`.
  int storage_records = 0;
  for (const std::string& r : records_of(path("views.pt"))) storage_records += r.rfind("data/", 0) == 0;
  EXPECT_EQ(storage_records, 2);

  const Value loaded = load(path("views.pt"));
  EXPECT_EQ(loaded, object);
  const at::Tensor lrows = loaded.at("rows").to_tensor();
  const at::Tensor lcols = loaded.at("cols").to_tensor();
  const at::Tensor lcolumn = loaded.at("column").to_tensor();
  EXPECT_TRUE(same_storage(lrows, lcols));
  EXPECT_TRUE(same_storage(lrows, lcolumn));
  EXPECT_FALSE(same_storage(lrows, loaded.at("other").to_tensor()));
  EXPECT_EQ(lrows.storage().nbytes(), 24 * sizeof(float));
  EXPECT_EQ(lrows.storage_offset(), 6);
  EXPECT_EQ(lcolumn.storage_offset(), 2);
  EXPECT_EQ(lcols.strides(), cols.strides());
  EXPECT_EQ(lcolumn.strides(), column.strides());
  // Writing through one view shows through the others, as in the saved tensors.
  lrows.select(0, 0).fill_(-1);  // elements 6..11
  EXPECT_EQ(lcols.select(0, 0).select(0, 1).item<float>(), -1.0f);
  EXPECT_EQ(lcolumn.select(0, 1).item<float>(), -1.0f);
}

TEST_F(CheckpointTest, NonContiguousTensorsKeepTheirLayout) {
  const at::Tensor base = at::arange(60, at::kDouble);
  const Value object = Value::list({
      base.view({3, 4, 5}).permute({2, 0, 1}),
      base.slice(0, 1, 60, 7),                           // step 7
      base.narrow(0, 0, 4).view({1, 4}).expand({3, 4}),  // stride 0
      base.view({6, 10}).narrow(1, 3, 4),                // row stride 10, offset 3
      at::arange(5, at::kLong).to(at::kBool).slice(0, 0, 5, 2),
  });
  const Value loaded = round_trip(object);
  ASSERT_EQ(loaded, object);
  for (size_t i = 0; i < object.items().size(); ++i) {
    SCOPED_TRACE(i);
    const at::Tensor& want = object.items()[i].to_tensor();
    const at::Tensor& got = loaded.items()[i].to_tensor();
    EXPECT_EQ(got.strides(), want.strides());
    EXPECT_EQ(got.storage_offset(), want.storage_offset());
    EXPECT_EQ(got.is_contiguous(), want.is_contiguous());
  }
}

TEST_F(CheckpointTest, ScalarAndEmptyTensors) {
  const Value object = Value::tuple({scalar_long(7), at::empty({0, 3}, at::kFloat), at::empty({0}, at::kHalf)});
  const Value loaded = round_trip(object);
  ASSERT_EQ(loaded, object);
  EXPECT_EQ(loaded.items()[0].to_tensor().dim(), 0);
  EXPECT_EQ(loaded.items()[0].to_tensor().item<int64_t>(), 7);
  EXPECT_EQ(loaded.items()[1].to_tensor().sizes(), (std::vector<int64_t>{0, 3}));
}

TEST_F(CheckpointTest, NestedContainersIntsFloatsAndStrings) {
  const Value object = make_cpp_object();
  const Value loaded = round_trip(object);
  EXPECT_EQ(loaded, object);
  EXPECT_EQ(loaded.kind(), Value::Kind::Dict);
  const Value& nested = loaded.at("nested");
  EXPECT_EQ(nested.at("tuple").kind(), Value::Kind::Tuple);
  EXPECT_EQ(nested.at("tuple4").items().size(), 4u);
  EXPECT_EQ(nested.at("empty_tuple").kind(), Value::Kind::Tuple);
  EXPECT_EQ(nested.at("od").kind(), Value::Kind::OrderedDict);
  EXPECT_EQ(nested.at("od").entries()[0].first.to_string(), "b");  // insertion order, not sorted
  EXPECT_EQ(nested.at("int_keys").at(1).to_string(), "one");
  EXPECT_EQ(loaded.at("ints").items().back().to_int(), std::numeric_limits<int64_t>::min());
  EXPECT_EQ(loaded.at("ints").items()[11].to_int(), int64_t{1} << 40);
  EXPECT_EQ(loaded.at("ints").items()[12].to_int(), -(int64_t{1} << 40));
  EXPECT_TRUE(std::signbit(loaded.at("floats").items()[1].to_double()));
  EXPECT_EQ(loaded.at("strings").items()[3].to_string(), "\xe2\x9c\x93 \xf0\x9d\x94\x98nicode");
  EXPECT_TRUE(loaded.at("none").is_none());
  EXPECT_EQ(loaded.at("state_dict").kind(), Value::Kind::OrderedDict);

  // NaN survives (Value == treats float NaN as Python does, so check it apart).
  const Value nan = round_trip(Value::list({std::nan("")}));
  EXPECT_TRUE(std::isnan(nan.items()[0].to_double()));
}

TEST_F(CheckpointTest, SharedObjectsStayShared) {
  Value shared_list = Value::list({1, 2});
  const at::Tensor tied = at::arange(4, at::kFloat);
  const Value object = Value::dict({{"a", shared_list}, {"b", shared_list}, {"w1", tied}, {"w2", tied}});
  Value loaded = round_trip(object);
  ASSERT_EQ(loaded, object);
  Value a = loaded.at("a");
  a.append(3);
  EXPECT_EQ(loaded.at("b").items().size(), 3u);
  EXPECT_EQ(loaded.at("w1").to_tensor().unsafeGetTensorImpl(), loaded.at("w2").to_tensor().unsafeGetTensorImpl());
}

TEST_F(CheckpointTest, ManyEntriesUseLongMemoIndices) {
  // More than 256 memoized objects: LONG_BINPUT / LONG_BINGET, and batches of 1000 in SETITEMS / APPENDS.
  Value big = Value::ordered_dict();
  Value list = Value::list();
  for (int i = 0; i < 2500; ++i) {
    big.set("key" + std::to_string(i), at::arange(2, at::kFloat).add(i));
    list.append(i % 3 == 0 ? Value("s" + std::to_string(i % 7)) : Value(i));
  }
  const Value object = Value::tuple({big, list, list});
  const Value loaded = round_trip(object);
  EXPECT_EQ(loaded, object);
  EXPECT_EQ(loaded.items()[0].at("key2499").to_tensor().data_ptr<float>()[1], 2500.0f);
}

TEST_F(CheckpointTest, StateDictExample) {
  // How a trainer builds and reads back a checkpoint.
  at::Tensor weight = at::arange(6, at::kFloat).reshape({2, 3}).clone();
  weight.set_requires_grad(true);  // a parameter may be saved as it is; it loads as a plain tensor
  Value model = Value::ordered_dict();
  model.set("fc.weight", weight).set("fc.bias", at::arange(2, at::kFloat));
  Value checkpoint = Value::dict();
  checkpoint.set("model", model).set("epoch", 4).set("lr", 0.01);
  checkpoint.set("param_groups", Value::list({Value::dict({{"lr", 0.01}, {"params", Value::list({0, 1})}})}));
  save(checkpoint, path("ckpt.pt"));
  const Value back = load(path("ckpt.pt"));
  EXPECT_EQ(back.at("epoch").to_int(), 4);
  EXPECT_DOUBLE_EQ(back.at("lr").to_double(), 0.01);
  for (const auto& [name, tensor] : back.at("model").entries()) {
    EXPECT_TRUE(tensor.to_tensor().equal(model.at(name.to_string()).to_tensor()));
    EXPECT_FALSE(tensor.to_tensor().requires_grad());
  }
  EXPECT_EQ(back.at("param_groups").items()[0].at("params").items()[1].to_int(), 1);
}

// ---------------------------------------------------------------------------------------------------------------
// What save() refuses

TEST_F(CheckpointTest, SaveRefusesWhatACheckpointCannotHold) {
  const std::string p = path("bad.pt");
  const std::string prefix = "cannot write checkpoint '" + p + "': ";
  Value cyclic = Value::list();
  cyclic.append(cyclic);
  EXPECT_EQ(checkpoint_error([&] { save(cyclic, p); }),
            prefix + "cannot save a list, tuple or dict that contains itself");
  cyclic.items().clear();  // break the cycle so that it is freed

  EXPECT_EQ(checkpoint_error([&] { save(Value(at::Tensor()), p); }), prefix + "cannot save an undefined tensor");
  EXPECT_NE(checkpoint_error([&] {
              save(Value(at::empty({2}, at::kComplexFloat)), p);
            }).find("cannot save a tensor of dtype ComplexFloat"),
            std::string::npos);
  const at::Tensor f = at::arange(4, at::kFloat);
  EXPECT_NE(checkpoint_error([&] {
              save(Value::list({f, f.view(at::kInt)}), p);
            }).find("view the same storage"),
            std::string::npos);
  EXPECT_EQ(checkpoint_error([&] { save(Value(std::string("\xff")), p); }), prefix + "string '?' is not valid UTF-8");
  Value deep = Value::list();
  Value inner = deep;
  for (int i = 0; i < 1000; ++i) {
    Value next = Value::list();
    inner.append(next);
    inner = next;
  }
  EXPECT_EQ(checkpoint_error([&] { save(deep, p); }),
            prefix + "cannot save lists, tuples or dicts nested deeper than 1000 levels");
  EXPECT_EQ(files(), std::vector<std::string>{});  // no temporary file left behind
}

// ---------------------------------------------------------------------------------------------------------------
// The unpickler: refusals and broken input

TEST(PickleReaderTest, RefusesForbiddenGlobals) {
  EXPECT_EQ(runtime_error([] {
              unpickle(
                  B("\x80\x02"
                    "cos\nsystem\nX\x02\0\0\0ls\x85R."));
            }),
            "pickle global 'os.system' is not allowed (weights_only)");
  EXPECT_EQ(runtime_error([] {
              unpickle(
                  "\x80\x02"
                  "cbuiltins\neval\n.");
            }),
            "pickle global 'builtins.eval' is not allowed (weights_only)");
  EXPECT_EQ(runtime_error([] {
              unpickle(
                  "\x80\x02"
                  "ctorch\nload\n.");
            }),
            "pickle global 'torch.load' is not allowed (weights_only)");
  // STACK_GLOBAL (protocol 4) goes through the same table.
  EXPECT_EQ(runtime_error([] { unpickle("\x80\x04\x8c\x02os\x8c\x06system\x93."); }),
            "pickle global 'os.system' is not allowed (weights_only)");
}

TEST(PickleReaderTest, RefusesOpcodesOutsideTheAllowList) {
  EXPECT_EQ(runtime_error([] { unpickle("\x80\x02\xff."); }), "unknown pickle opcode 0xff at byte 2");
  EXPECT_EQ(runtime_error([] { unpickle("\x80\x02(ios\nsystem\n."); }),
            "pickle opcode INST (0x69) at byte 3 is not allowed (weights_only)");
  EXPECT_EQ(runtime_error([] { unpickle("\x80\x02N0."); }),
            "pickle opcode POP (0x30) at byte 3 is not allowed (weights_only)");
  EXPECT_EQ(runtime_error([] { unpickle("\x80\x02NN\x81."); }),
            "pickle opcode NEWOBJ (0x81) at byte 4 is not allowed (weights_only)");
  EXPECT_EQ(runtime_error([] { unpickle("\x80\x02N)R."); }),
            "calling a NoneType is not allowed (weights_only) (REDUCE at pickle byte 4)");
  EXPECT_EQ(runtime_error([] { unpickle("\x80\x02}N\x62."); }),
            "BUILD on a dict is not allowed (weights_only) (BUILD at pickle byte 4)");
  EXPECT_EQ(runtime_error([] { unpickle("\x80\x02)Na."); }),
            "appending to a tuple is not allowed (weights_only) (APPEND at pickle byte 4)");
  EXPECT_EQ(runtime_error([] { unpickle("\x80\x02\x80\x09."); }),
            "unsupported pickle protocol 9 (PROTO at pickle byte 2)");
}

TEST(PickleReaderTest, ReadsWhatPythonWrites) {
  // {'a': [1, -1, 2**40, 1.5, None, True, 'é'], 'od': OrderedDict(x=1) with _metadata set by BUILD, dev: device}
  const std::string p2 =
      B("\x80\x02}q\x00(X\x01\x00\x00\x00"
        "aq\x01]q\x02(K\x01J\xff\xff\xff\xff\x8a\x06\x00\x00\x00\x00\x00\x01"
        "G?\xf8\x00\x00\x00\x00\x00\x00N\x88X\x02\x00\x00\x00\xc3\xa9"
        "e"
        "X\x02\x00\x00\x00odccollections\nOrderedDict\nq\x03)Rq\x04X\x01\x00\x00\x00xK\x01s"
        "}X\x09\x00\x00\x00_metadatah\x03)Rsb"
        "X\x03\x00\x00\x00"
        "devctorch\ndevice\nX\x04\x00\x00\x00"
        "cudaK\x01\x86R"
        "u.");
  const Value v = unpickle(p2);
  const Value expected = Value::dict({
      {"a", Value::list({1, -1, int64_t{1} << 40, 1.5, nullptr, true, "\xc3\xa9"})},
      {"od", Value::ordered_dict({{"x", 1}})},
      {"dev", "cuda:1"},
  });
  EXPECT_EQ(v, expected);
  // Protocol 4: FRAME, SHORT_BINUNICODE, MEMOIZE, STACK_GLOBAL, BINUNICODE8, SETITEM, APPEND, LONG_BINPUT/GET.
  const std::string p4 =
      B("\x80\x04\x95\x00\x00\x00\x00\x00\x00\x00\x00"
        "\x8c\x0b"
        "collections\x94\x8c\x0bOrderedDict\x94\x93\x94)R\x94"
        "\x8c\x01k\x94]\x94K\x07"
        "a\x8d\x02\x00\x00\x00\x00\x00\x00\x00hia"
        "r\x00\x01\x00\x00s"
        "\x8c\x01zj\x00\x01\x00\x00s.");
  EXPECT_EQ(unpickle(p4), Value::ordered_dict({{"k", Value::list({7, "hi"})}, {"z", Value::list({7, "hi"})}}));
  // Ints: BININT1/2, negative BININT, LONG1 of every width, and one that does not fit.
  EXPECT_EQ(unpickle("\x80\x02M\xff\xff.").to_int(), 65535);
  EXPECT_EQ(unpickle(B("\x80\x02\x8a\x00.")).to_int(), 0);
  EXPECT_EQ(unpickle("\x80\x02\x8a\x01\xff.").to_int(), -1);
  EXPECT_EQ(unpickle(B("\x80\x02\x8a\x08\x00\x00\x00\x00\x00\x00\x00\x80.")).to_int(),
            std::numeric_limits<int64_t>::min());
  EXPECT_EQ(unpickle(B("\x80\x02\x8a\x09\xff\xff\xff\xff\xff\xff\xff\xff\xff.")).to_int(), -1);
  EXPECT_EQ(runtime_error([] { unpickle(B("\x80\x02\x8a\x09\0\0\0\0\0\0\0\0\x01.")); }),
            "an integer does not fit in 64 bits (LONG1 at pickle byte 2)");
}

TEST(PickleReaderTest, RebuildsTensorsOnlyInsideTheirStorage) {
  const auto loader = [](const std::string& key, const std::string&, c10::ScalarType dtype, int64_t numel) {
    EXPECT_EQ(key, "0");
    EXPECT_EQ(dtype, at::kFloat);
    return at::arange(numel, at::kFloat);
  };
  const auto tensor_pickle = [](const std::string& size, const std::string& stride, char offset) {
    return B("\x80\x02"
             "ctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storagectorch\nFloatStorage\n"
             "X\x01\x00\x00\x00"
             "0X\x03\x00\x00\x00"
             "cpuK\x04tQK") +
           std::string(1, offset) + size + stride +
           "\x89"
           "ccollections\nOrderedDict\n)RtR.";
  };
  const at::Tensor t = unpickle(tensor_pickle("K\x02\x85", "K\x01\x85", 2), loader).to_tensor();
  EXPECT_TRUE(t.equal(at::arange(2, 4, at::kFloat)));
  EXPECT_NE(runtime_error([&] {
              unpickle(tensor_pickle("K\x03\x85", "K\x01\x85", 2), loader);
            }).find("a tensor reaches element 4 of a storage of 4 elements"),
            std::string::npos);
  EXPECT_NE(
      runtime_error([&] { unpickle(tensor_pickle("K\x02\x85", "K\x04\x85", 0), loader); }).find("reaches element 4 of"),
      std::string::npos);
  EXPECT_EQ(unpickle(tensor_pickle("K\x02\x85", "K\x01\x85", 0), loader).to_tensor().sizes()[0], 2);
  EXPECT_NE(runtime_error([&] {
              unpickle(tensor_pickle("K\x02\x85", "J\xff\xff\xff\xff\x85", 2), loader);
            }).find("negative stride"),
            std::string::npos);
  EXPECT_NE(runtime_error([&] {
              unpickle(tensor_pickle("K\x02K\x02\x86", "K\x01\x85", 0), loader);
            }).find("size and stride have different lengths"),
            std::string::npos);
}

TEST(PickleReaderTest, RefusesCyclesAndDeepNestingWithoutCrashing) {
  EXPECT_EQ(runtime_error([] {
              unpickle(
                  B("\x80\x02]q\x00h\x00"
                    "a."));
            }),
            "the pickle holds a list, tuple or dict that contains itself");
  const int n = 100000;  // a hundred thousand levels: nothing may recurse on them
  EXPECT_EQ(runtime_error([&] { unpickle("\x80\x02" + std::string(n, ']') + std::string(n - 1, 'a') + "."); }),
            "the pickle nests lists, tuples or dicts deeper than 1000 levels");
  EXPECT_EQ(runtime_error([&] { unpickle("\x80\x02N" + std::string(n, '\x85') + "."); }),
            "the pickle nests lists, tuples or dicts deeper than 1000 levels");
  // Deep garbage that is not returned is freed without recursion too.
  EXPECT_TRUE(unpickle("\x80\x02" + std::string(n, ']') + std::string(n - 1, 'a') + "N.").is_none());
  // A million levels in 2 MB of pickle are more objects than the memory budget allows: refused before the end.
  const int million = 1000000;
  EXPECT_NE(runtime_error([&] {
              unpickle("\x80\x02" + std::string(million, ']') + std::string(million - 1, 'a') + ".");
            }).find("unpickling needs more than 186 MiB"),
            std::string::npos);
  // A cycle that is not returned is broken, and 1000 levels are fine.
  EXPECT_TRUE(unpickle(B("\x80\x02]q\x00h\x00"
                         "aN."))
                  .is_none());
  EXPECT_NO_THROW(unpickle("\x80\x02" + std::string(1000, ']') + std::string(999, 'a') + "."));
}

TEST(PickleReaderTest, TruncatedOrCorruptPicklesThrowAndNeverCrash) {
  const Pickle pickle = write_pickle(make_cpp_object());
  const StorageLoader loader = [&](const std::string& key, const std::string&, c10::ScalarType dtype, int64_t numel) {
    for (const StorageRecord& r : pickle.storages) {
      if (r.key == key && r.dtype == dtype && r.numel == numel) {
        return at::empty({0}, r.tensor.options()).set_(r.tensor.storage(), 0, {numel}, {1});
      }
    }
    throw std::runtime_error("no storage " + key);
  };
  const std::string& bytes = pickle.bytes;
  EXPECT_EQ(unpickle(bytes, loader), make_cpp_object());
  EXPECT_EQ(runtime_error([&] { unpickle(bytes.substr(0, 2), loader); }),
            "truncated pickle: it ends at byte 2 without a STOP opcode");
  for (size_t n = 0; n < bytes.size(); ++n) {
    EXPECT_THROW(unpickle(bytes.substr(0, n), loader), std::runtime_error) << "prefix of " << n << " bytes";
  }
  std::mt19937 rng(1234);
  int accepted = 0;
  for (int i = 0; i < 20000; ++i) {
    std::string corrupt = bytes;
    const int flips = 1 + static_cast<int>(rng() % 3);
    for (int f = 0; f < flips; ++f) corrupt[rng() % corrupt.size()] = static_cast<char>(rng());
    try {
      unpickle(corrupt, loader);
      ++accepted;
    } catch (const std::exception&) {
    }
  }
  EXPECT_LT(accepted, 20000);
}

// ---------------------------------------------------------------------------------------------------------------
// load(): files that are not checkpoints

TEST_F(CheckpointTest, MissingFile) {
  const std::string p = path("missing.pt");
  EXPECT_EQ(checkpoint_error([&] { load(p); }), "cannot read checkpoint '" + p + "': No such file or directory");
  EXPECT_EQ(checkpoint_error([&] { load(dir_); }), "cannot read checkpoint '" + dir_ + "': Is a directory");
}

TEST_F(CheckpointTest, NotAZipFile) {
  write_file("text.pt", "this is not a checkpoint\n");
  write_file("empty.pt", "");
  write_file("legacy.pt", B("\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19."));
  for (const char* name : {"text.pt", "empty.pt", "legacy.pt"}) {
    EXPECT_EQ(checkpoint_error([&] { load(path(name)); }),
              "'" + path(name) + "' is not a PyTorch checkpoint (not a zip file written by torch.save)");
  }
}

TEST_F(CheckpointTest, TruncatedFile) {
  save(make_cpp_object(), path("full.pt"));
  const std::string bytes = read_file("full.pt");
  write_file("half.pt", bytes.substr(0, bytes.size() / 2));
  const std::string message = checkpoint_error([&] { load(path("half.pt")); });
  EXPECT_EQ(message.rfind("cannot read checkpoint '" + path("half.pt") + "': the file is truncated or corrupt (", 0),
            0u)
      << message;
  EXPECT_EQ(message.find('\n'), std::string::npos) << message;
  // Any cut, and any corrupted byte, gives a CheckpointError, never a crash.
  for (size_t n = 4; n < bytes.size(); n += 61) {
    write_file("cut.pt", bytes.substr(0, n));
    EXPECT_THROW(load(path("cut.pt")), CheckpointError) << "cut at " << n;
  }
  std::mt19937 rng(99);
  for (int i = 0; i < 300; ++i) {
    std::string corrupt = bytes;
    corrupt[4 + rng() % (corrupt.size() - 4)] ^= static_cast<char>(1 + rng() % 255);
    write_file("corrupt.pt", corrupt);
    try {
      load(path("corrupt.pt"));
    } catch (const CheckpointError& e) {
      EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos) << e.what();
    }
  }
}

// What a load in a child process cost and said: the peak of its resident memory above what it had at the start
// (VmHWM - VmRSS, MiB), its growth in anonymous memory (RssAnon, MiB), and the CheckpointError's message ("" if none).
struct MeasuredLoad {
  double peak_mib = -1;
  double anon_mib = -1;
  std::string error;
};

double status_mib(const char* field) {
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);) {
    if (line.rfind(field, 0) == 0) return std::stod(line.substr(std::strlen(field) + 1)) / 1024.0;
  }
  return -1;
}

MeasuredLoad measure_load(const std::string& file) {
  int channel[2];
  if (::pipe(channel) != 0) return {};
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::close(channel[0]);
    const double rss = status_mib("VmRSS:"), anon = status_mib("RssAnon:");
    std::string error;
    double anon_after = anon;
    try {
      const Value v = load(file);
      anon_after = status_mib("RssAnon:");  // while the loaded tensors are alive
    } catch (const CheckpointError& e) {
      error = e.what();
    }
    const std::string report =
        std::to_string(status_mib("VmHWM:") - rss) + "\n" + std::to_string(anon_after - anon) + "\n" + error;
    ssize_t ignored = ::write(channel[1], report.data(), report.size());
    (void)ignored;
    ::_exit(0);
  }
  ::close(channel[1]);
  std::string report;
  char buffer[4096];
  for (ssize_t n; (n = ::read(channel[0], buffer, sizeof buffer)) > 0;) report.append(buffer, static_cast<size_t>(n));
  ::close(channel[0]);
  ::waitpid(pid, nullptr, 0);
  MeasuredLoad m;
  std::istringstream lines(report);
  std::string line;
  if (std::getline(lines, line)) m.peak_mib = std::stod(line);
  if (std::getline(lines, line)) m.anon_mib = std::stod(line);
  std::getline(lines, m.error);
  return m;
}

TEST_F(CheckpointTest, NotARegularFile) {
  EXPECT_EQ(checkpoint_error([&] { load("/dev/zero"); }),
            "cannot read checkpoint '/dev/zero': not a regular file (a device, pipe or socket)");
  const std::string fifo = path("fifo.pt");
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  EXPECT_EQ(checkpoint_error([&] { load(fifo); }),  // without waiting for a writer
            "cannot read checkpoint '" + fifo + "': not a regular file (a device, pipe or socket)");
}

TEST_F(CheckpointTest, ABigFileThatIsNoCheckpointCostsOnlyItsDirectory) {
  // A 2 GiB sparse file starting like a zip: before, every rank read all of it into memory before refusing it.
  const std::string sparse = path("sparse.pt");
  {
    std::ofstream out(sparse);
    out << "PK\x03\x04";
  }
  ASSERT_EQ(::truncate(sparse.c_str(), off_t{2} << 30), 0);
  const MeasuredLoad m = measure_load(sparse);
  EXPECT_EQ(m.error, "cannot read checkpoint '" + sparse +
                         "': the file is truncated or corrupt (the zip has no end-of-central-directory record)");
  EXPECT_LT(m.peak_mib, 16) << "a refused 2 GiB file raised the peak memory by " << m.peak_mib << " MiB";
}

TEST_F(CheckpointTest, LoadingCopiesNoByteIntoFreshMemory) {
  // 160 MB of tensors: before, a load added 157 MiB of anonymous memory (a writable MAP_POPULATE copies each page).
  const int64_t numel = 40 << 20;
  const at::Tensor weights = at::arange(numel, at::kFloat);
  save(Value::dict({{"w", weights}}), path("big.pt"));
  const MeasuredLoad m = measure_load(path("big.pt"));
  EXPECT_EQ(m.error, "");
  EXPECT_LT(m.anon_mib, 8) << "loading a 160 MB checkpoint added " << m.anon_mib << " MiB of anonymous memory";
  // The tensors are writable all the same; what is written stays in the process, the file is unchanged.
  {
    Value loaded = load(path("big.pt"));
    at::Tensor w = loaded.at("w").to_tensor();
    w.narrow(0, 0, 1000).fill_(-1);
    EXPECT_EQ(w[0].item<float>(), -1);
    EXPECT_EQ(w[numel - 1].item<float>(), static_cast<float>(numel - 1));
  }
  EXPECT_EQ(load(path("big.pt")).at("w").to_tensor()[0].item<float>(), 0);
}

TEST_F(CheckpointTest, PickleMemoryBudget) {
  // 5 M empty lists in 5 MB of pickle took 2.27 GB per rank (torch.load: 0.67 GB); 5 M Nones on the stack the same.
  const size_t count = 5000000;
  const std::string lists = B("\x80\x02]") + "(" + std::string(count, ']') + "e.";
  const std::string nones = B("\x80\x02]") + "(" + std::string(count, 'N') + "e.";
  const std::string memo = B("\x80\x04N") + std::string(count, '\x94') + ".";  // a memo slot per byte (MEMOIZE)
  std::string dict = B("\x80\x02}(");  // 833,000 distinct int keys (BININT), each set to None
  for (uint32_t i = 0; dict.size() + 7 <= lists.size() - 2; ++i) {
    dict += 'J';
    dict.append(reinterpret_cast<const char*>(&i), 4);
    dict += 'N';
  }
  dict += "u.";
  // One 4 MB string, then a memo slot for it and a million fetches of it: copies must share the bytes.
  std::string strings = B("\x80\x02X") + std::string("\0\0\x40\0", 4) + std::string(4 << 20, 's') + B("q\0");
  while (strings.size() + 3 < lists.size()) strings += B("h\0");
  strings += ".";
  const size_t budget_mib = (kPickleBudgetBaseBytes + kPickleBudgetPerByte * lists.size()) >> 20;
  for (const auto& [name, pickle] : {std::pair<const char*, std::string>{"lists.pt", lists},
                                     {"nones.pt", nones},
                                     {"memo.pt", memo},
                                     {"dict.pt", dict},
                                     {"strings.pt", strings}}) {
    write_zip(name, {{"data.pkl", pickle}});
    const MeasuredLoad m = measure_load(path(name));
    const bool refused = m.error.find("unpickling needs more than " + std::to_string(budget_mib) +
                                      " MiB, the budget for a pickle of " + std::to_string(pickle.size()) +
                                      " bytes (64 MiB plus 64 bytes per byte); a checkpoint holds far fewer objects "
                                      "than this file builds") != std::string::npos;
    // The dict's 833,000 entries and the shared string fit their budget: loaded. The others build far more than
    // theirs: refused.
    const bool fits = std::string(name) == "dict.pt" || std::string(name) == "strings.pt";
    EXPECT_EQ(refused, !fits) << name << ": " << m.error;
    EXPECT_LT(m.peak_mib, 1.5 * static_cast<double>(budget_mib)) << name << ": the budget does not bound memory";
    std::printf("%s: %s at a peak of %.0f MiB (budget %zu MiB)\n", name, refused ? "refused" : "loaded", m.peak_mib,
                budget_mib);
  }
  // A list of a million ints, pickled as Python does (APPENDS every 1000), is well within its budget.
  std::string ints = B("\x80\x02]");
  for (int batch = 0; batch < 1000; ++batch) {
    ints += "(";
    for (int i = 0; i < 1000; ++i) ints += B("K\x07");
    ints += "e";
  }
  ints += ".";
  write_zip("ints.pt", {{"data.pkl", ints}});
  const MeasuredLoad m = measure_load(path("ints.pt"));
  EXPECT_EQ(m.error, "");
  EXPECT_EQ(load(path("ints.pt")).items().size(), 1000000u);
}

// Zips crafted by tests/checkpoint/hostile_zips.py (Python's zipfile): refused from their directory, with what is
// wrong.
TEST_F(CheckpointTest, HostileZipsAreRefusedFromTheirDirectory) {
  const std::string command =
      std::string("python3 ") + DDPRUN_SOURCE_DIR + "/tests/checkpoint/hostile_zips.py '" + dir_ + "'";
  ASSERT_EQ(std::system(command.c_str()), 0) << command;
  auto error = [&](const char* name) { return checkpoint_error([&] { load(path(name)); }); };
  auto corrupt = [&](const char* name, const std::string& what) {
    return "cannot read checkpoint '" + path(name) + "': the file is truncated or corrupt (" + what + ")";
  };
  // Before, PyTorchStreamReader inflated the 256 MiB version record (the 1 GiB one peaked at 2.34 GB).
  const MeasuredLoad bomb = measure_load(path("version_bomb.pt"));
  EXPECT_EQ(bomb.error, corrupt("version_bomb.pt",
                                "record 'archive/version' is compressed (method 8); torch.save stores records "
                                "uncompressed"));
  EXPECT_LT(bomb.peak_mib, 16);
  // Before, the record in the other folder replaced archive/data.pkl: the file loaded as the int 7.
  EXPECT_EQ(error("other_folder.pt"),
            corrupt("other_folder.pt",
                    "record 'zzz/data.pkl' lies outside the top folder 'archive' of the others; "
                    "torch.load refuses such a file, and so does ddprun"));
  EXPECT_EQ(error("duplicate.pt"),
            corrupt("duplicate.pt",
                    "the zip lists record 'archive/data.pkl' twice; which one a reader takes is not defined"));
  EXPECT_EQ(error("compressed.pt"), corrupt("compressed.pt",
                                            "record 'archive/data.pkl' is compressed (method 8); "
                                            "torch.save stores records uncompressed"));
  EXPECT_EQ(error("no_version.pt"), corrupt("no_version.pt", "it has no version record (not written by torch.save)"));
  EXPECT_EQ(error("future_version.pt"),
            corrupt("future_version.pt", "its format version 99 is not one LibTorch reads (1 to 10)"));
  EXPECT_EQ(error("no_folder.pt"),
            corrupt("no_folder.pt", "record 'data.pkl' is not in a top folder, as torch.save writes every record"));
  EXPECT_EQ(error("overlapping.pt"), corrupt("overlapping.pt",
                                             "records 'archive/data.pkl' and 'archive/data/0' share bytes; torch.save "
                                             "writes each record apart"));
}

TEST_F(CheckpointTest, ZipWithoutDataPkl) {
  write_zip("nodata.pt", {{"other", "x"}});
  EXPECT_EQ(
      checkpoint_error([&] { load(path("nodata.pt")); }),
      "cannot read checkpoint '" + path("nodata.pt") + "': it has no data.pkl record (not written by torch.save)");
}

TEST_F(CheckpointTest, ZipWithForbiddenGlobal) {
  write_zip("evil.pt", {{"data.pkl", B("\x80\x02"
                                       "cos\nsystem\nX\x02\0\0\0ls\x85R.")}});
  EXPECT_EQ(
      checkpoint_error([&] { load(path("evil.pt")); }),
      "cannot read checkpoint '" + path("evil.pt") + "': pickle global 'os.system' is not allowed (weights_only)");
}

TEST_F(CheckpointTest, TruncatedOrMissingStorageRecord) {
  // A pickle of one float tensor over storage '0' of 100 elements.
  const std::string pkl =
      B("\x80\x02"
        "ctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storagectorch\nFloatStorage\n"
        "X\x01\x00\x00\x00"
        "0X\x03\x00\x00\x00"
        "cpuKdtQK\x00Kd\x85K\x01\x85\x89"
        "ccollections\nOrderedDict\n)RtR.");
  write_zip("short.pt", {{"data.pkl", pkl}, {"data/0", std::string(40, '\0')}});
  EXPECT_EQ(checkpoint_error([&] { load(path("short.pt")); }),
            "cannot read checkpoint '" + path("short.pt") +
                "': record 'data/0' is truncated: it holds 40 bytes, the pickle needs 400");
  write_zip("nostorage.pt", {{"data.pkl", pkl}});
  EXPECT_EQ(checkpoint_error([&] { load(path("nostorage.pt")); }),
            "cannot read checkpoint '" + path("nostorage.pt") + "': record 'data/0' is missing");
  write_zip("ok.pt", {{"data.pkl", pkl}, {"data/0", std::string(400, '\0')}});
  EXPECT_EQ(load(path("ok.pt")).to_tensor().sizes()[0], 100);
}

// ---------------------------------------------------------------------------------------------------------------
// Atomic saving

TEST_F(CheckpointTest, SaveLeavesNoTemporaryFile) {
  save(Value::dict({{"epoch", 1}}), path("ckpt.pt"));
  EXPECT_EQ(files(), std::vector<std::string>{"ckpt.pt"});
  save(Value::dict({{"epoch", 2}}), path("ckpt.pt"));  // replaces
  EXPECT_EQ(files(), std::vector<std::string>{"ckpt.pt"});
  EXPECT_EQ(load(path("ckpt.pt")).at("epoch").to_int(), 2);
}

TEST_F(CheckpointTest, FailedSaveKeepsTheOldFile) {
  const std::string p = path("ckpt.pt");
  const Value old = Value::dict({{"epoch", 1}, {"w", at::arange(3, at::kFloat)}});
  save(old, p);
  const std::string prefix = "cannot write checkpoint '" + p + "': ";

  // The folder cannot take the temporary file: a folder in its place (works as root, where permissions don't).
  const std::string temp = AtomicFile::temporary_path(p);
  fs::create_directory(temp);
  EXPECT_EQ(checkpoint_error([&] {
              save(Value::dict({{"epoch", 2}}), p);
            }),
            prefix + "cannot create '" + temp + "': Is a directory");
  fs::remove(temp);
  EXPECT_EQ(load(p), old);

  if (::geteuid() != 0) {  // an unwritable folder stops everyone but root
    fs::permissions(dir_, fs::perms::owner_write, fs::perm_options::remove);
    EXPECT_EQ(checkpoint_error([&] {
                save(Value::dict({{"epoch", 3}}), p);
              }),
              prefix + "cannot create '" + temp + "': Permission denied");
    fs::permissions(dir_, fs::perms::owner_write, fs::perm_options::add);
    EXPECT_EQ(load(p), old);
  }

  // Content a checkpoint cannot hold: nothing is written at all.
  EXPECT_THROW(save(Value(at::empty({1}, at::kComplexDouble)), p), CheckpointError);
  EXPECT_EQ(load(p), old);
  EXPECT_EQ(files(), std::vector<std::string>{"ckpt.pt"});

  // The rename fails (the target is a non-empty folder): the temporary file is removed.
  fs::create_directories(path("taken.pt/inside"));
  const std::string taken = checkpoint_error([&] { save(old, path("taken.pt")); });
  EXPECT_EQ(taken.rfind("cannot write checkpoint '" + path("taken.pt") + "': cannot rename", 0), 0u) << taken;
  EXPECT_EQ(files(), (std::vector<std::string>{"ckpt.pt", "taken.pt"}));

  // A folder that does not exist.
  const std::string nowhere = path("no/such/folder/ckpt.pt");
  EXPECT_EQ(checkpoint_error([&] { save(old, nowhere); }),
            "cannot write checkpoint '" + nowhere + "': cannot create '" + AtomicFile::temporary_path(nowhere) +
                "': No such file or directory");
}

// A state big enough to be written with direct I/O, its size not a multiple of the 4 KiB block.
Value big_object(float fill) {
  const int64_t numel = static_cast<int64_t>(AtomicFile::kDirectMinBytes / 4) + 1234;
  at::Tensor t = at::arange(numel, at::kFloat).add_(fill);
  return Value::dict({{"w", t}, {"view", t.narrow(0, 7, 1000)}, {"fill", static_cast<double>(fill)}});
}

// Runs `child` in a forked process and returns its exit status (-1 if it died of a signal).
int in_child(const std::function<int()>& child) {
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) ::_exit(child());
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

TEST_F(CheckpointTest, DirectWritesRoundTripWithTheExactLength) {
  const Value object = big_object(0.5F);
  save(object, path("big.pt"));
  EXPECT_EQ(load(path("big.pt")), object);
  const Value loaded = load(path("big.pt"));
  EXPECT_EQ(loaded.at("view").to_tensor().storage().data_ptr().get(),
            loaded.at("w").to_tensor().storage().data_ptr().get());
  // The second name is a byte-for-byte copy, also written directly.
  save_as(object, {path("model_3.pt"), path("checkpoint.pt")});
  EXPECT_EQ(read_file("model_3.pt"), read_file("checkpoint.pt"));
  EXPECT_EQ(read_file("model_3.pt"), read_file("big.pt"));
  EXPECT_EQ(files(), (std::vector<std::string>{"big.pt", "checkpoint.pt", "model_3.pt"}));
}

// A process killed at any stage of a save (its last act at that stage) leaves a file that loads: the old one before
// the rename, the new one from then on; small (buffered) and large (direct I/O) files alike.
TEST_F(CheckpointTest, ACrashAtEveryStageLeavesALoadableFile) {
  for (const bool large : {false, true}) {
    const Value old = large ? big_object(1) : Value::dict({{"epoch", 1}, {"w", at::arange(5, at::kFloat)}});
    const Value next = large ? big_object(2) : Value::dict({{"epoch", 2}, {"w", at::arange(6, at::kFloat)}});
    for (const WriteStage stage : {WriteStage::Created, WriteStage::Written, WriteStage::Synced, WriteStage::Renamed,
                                   WriteStage::FolderSynced}) {
      SCOPED_TRACE(std::string(large ? "large" : "small") + ", crash after " + to_string(stage));
      save(old, path("ckpt.pt"));
      const int status = in_child([&] {
        try {
          save(next, path("ckpt.pt"), [stage](WriteStage s) {
            if (s == stage) ::_exit(42);  // the process dies here: no destructor, no clean-up
          });
        } catch (...) {
          return 1;
        }
        return 0;
      });
      ASSERT_EQ(status, 42);
      const Value found = load(path("ckpt.pt"));
      EXPECT_EQ(found, stage < WriteStage::Renamed ? old : next);
      for (const std::string& f : files()) fs::remove(path(f));
    }
  }
}

// A writer killed mid-write (kill -9 of rank 0, a single SIGTERM) leaves its partial temporary file: before, these
// (12-142 MB each) stayed forever. remove_stale_temporaries removes those whose writer is gone, and only those.
TEST_F(CheckpointTest, StaleTemporariesOfDeadWritersAreRemoved) {
  const Value next = big_object(2);
  const int status = in_child([&] {
    save(next, path("checkpoint.pth"), [](WriteStage s) {
      if (s == WriteStage::Written) ::_exit(42);  // dies with the file written, not renamed
    });
    return 0;
  });
  ASSERT_EQ(status, 42);
  const std::vector<std::string> left = files();
  ASSERT_EQ(left.size(), 1u);
  EXPECT_EQ(left[0].rfind("checkpoint.pth.tmp.", 0), 0u) << left[0];
  // An earlier version's name (no host) whose pid is gone, a file being written right now, and files that are not
  // ours stay or go as they should.
  write_file("model_3.pth.tmp.999999999", "partial");
  AtomicFile writing(path("model_4.pth"));
  writing.write("x", 1);
  write_file("notes.tmp.txt", "mine");
  write_file("model_5.pth.tmp.host.abc", "not our naming");
  write_file("notes.tmp.1", "another program's, with a pid-like suffix");
  const std::vector<StaleTemporary> removed = remove_stale_temporaries(dir_, CheckpointFolder::is_checkpoint_name);
  std::vector<std::string> names;
  for (const StaleTemporary& r : removed) names.push_back(fs::path(r.path).filename().string());
  std::sort(names.begin(), names.end());
  ASSERT_EQ(names.size(), 2u);
  EXPECT_EQ(names[0], left[0]);
  EXPECT_EQ(names[1], "model_3.pth.tmp.999999999");
  EXPECT_GT(removed[0].bytes + removed[1].bytes, AtomicFile::kDirectMinBytes);
  EXPECT_TRUE(fs::exists(AtomicFile::temporary_path(path("model_4.pth"))));  // its writer holds it
  writing.commit();
  EXPECT_EQ(files(),
            (std::vector<std::string>{"model_4.pth", "model_5.pth.tmp.host.abc", "notes.tmp.1", "notes.tmp.txt"}));
}

// Write errors (here the file-size limit, as a full disk would) name the path and the errno text, and leave the
// previous checkpoint intact.
TEST_F(CheckpointTest, AWriteErrorNamesThePathAndKeepsTheOldFile) {
  for (const bool large : {false, true}) {
    const Value old = Value::dict({{"epoch", 1}});
    save(old, path("ckpt.pt"));
    const Value next = large ? big_object(3) : Value::dict({{"w", at::zeros({1 << 20}, at::kFloat)}});
    const std::string message_file = path("message.txt");
    const int status = in_child([&] {
      std::signal(SIGXFSZ, SIG_IGN);
      const rlimit limit{1 << 20, 1 << 20};
      ::setrlimit(RLIMIT_FSIZE, &limit);
      try {
        save(next, path("ckpt.pt"));
      } catch (const CheckpointError& e) {
        std::ofstream(message_file) << e.what();
        return 0;
      }
      return 1;
    });
    ASSERT_EQ(status, 0);
    const std::string temp = path("ckpt.pt") + ".tmp.";
    const std::string message = read_file("message.txt");
    EXPECT_EQ(message.rfind("cannot write checkpoint '" + path("ckpt.pt") + "': cannot write '" + temp, 0), 0u)
        << message;
    EXPECT_NE(message.find("': File too large"), std::string::npos) << message;
    EXPECT_EQ(load(path("ckpt.pt")), old);
    EXPECT_EQ(files(), (std::vector<std::string>{"ckpt.pt", "message.txt"}));
    fs::remove(message_file);
  }
}

TEST_F(CheckpointTest, ACorruptTensorRecordFailsItsChecksum) {
  const at::Tensor w = at::arange(1000, at::kFloat);
  save(Value::dict({{"w", w}}), path("ok.pt"));
  std::string bytes = read_file("ok.pt");
  // Float 500.0 is 0x43fa0000: find its bytes inside the record and flip one bit.
  const std::string needle("\x00\x00\xfa\x43", 4);
  const size_t at = bytes.find(needle);
  ASSERT_NE(at, std::string::npos);
  bytes[at + 2] ^= 0x01;
  write_file("flipped.pt", bytes);
  const std::string message = checkpoint_error([&] { load(path("flipped.pt")); });
  EXPECT_EQ(message.rfind(
                "cannot read checkpoint '" + path("flipped.pt") + "': record 'data/0' is corrupt (its CRC-32 is ", 0),
            0u)
      << message;
  EXPECT_NE(message.find(", the zip directory says "), std::string::npos) << message;
}

// load() reads each record in 1 MiB pieces and chains their CRC-32s: a flipped bit in the last piece of a 24 MiB
// record is found, and an intact one loads.
TEST_F(CheckpointTest, ACorruptLargeRecordFailsItsChecksumInAnyPiece) {
  const at::Tensor w = at::arange(6 << 20, at::kFloat);  // 24 MiB
  save(Value::dict({{"w", w}}), path("large.pt"));
  EXPECT_TRUE(load(path("large.pt")).at("w").to_tensor().equal(w));
  std::string bytes = read_file("large.pt");
  const float last = static_cast<float>((6 << 20) - 2);
  std::string needle(4, '\0');
  std::memcpy(&needle[0], &last, 4);
  const size_t at = bytes.rfind(needle);
  ASSERT_NE(at, std::string::npos);
  bytes[at + 1] ^= 0x10;
  write_file("flipped_large.pt", bytes);
  const std::string message = checkpoint_error([&] { load(path("flipped_large.pt")); });
  EXPECT_NE(message.find("record 'data/0' is corrupt (its CRC-32 is "), std::string::npos) << message;
}

// A file written in place while load() reads it (ddprun's saves never do that: they rename a new file over it, but
// another program may) is refused, not returned from records that may no longer be the ones checked: here a thread
// rewrites the file's first byte with the same value over and over (the bytes stay valid, only the file's times
// change), so every load either returns the tensor or says the file changed, and at least one says so.
TEST_F(CheckpointTest, AFileWrittenInPlaceDuringALoadIsRefused) {
  const at::Tensor w = at::arange(6 << 20, at::kFloat);  // 24 MiB: a load spans several clock ticks of file times
  save(Value::dict({{"w", w}}), path("rewritten.pt"));
  const int fd = ::open(path("rewritten.pt").c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  char first = 0;
  ASSERT_EQ(::pread(fd, &first, 1, 0), 1);
  std::atomic<bool> stop{false};
  std::thread writer([&] {
    while (!stop.load()) {
      if (::pwrite(fd, &first, 1, 0) != 1) break;
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  });
  int refused = 0, loaded = 0;
  for (int i = 0; i < 40 && refused < 3; ++i) {
    try {
      EXPECT_TRUE(load(path("rewritten.pt")).at("w").to_tensor().equal(w));
      ++loaded;
    } catch (const CheckpointError& e) {
      EXPECT_EQ(std::string(e.what()), "cannot read checkpoint '" + path("rewritten.pt") +
                                           "': the file was written in place while it was being loaded; load it again");
      ++refused;
    }
  }
  stop = true;
  writer.join();
  ::close(fd);
  EXPECT_GE(refused, 1) << "40 loads while the file was being rewritten in place, " << loaded << " returned";
  EXPECT_TRUE(load(path("rewritten.pt")).at("w").to_tensor().equal(w));  // left alone, it loads
}

TEST_F(CheckpointTest, LoadFromMemoryReadsTheSameObject) {
  save(make_cpp_object(), path("obj.pt"));
  const std::string bytes = read_file("obj.pt");
  EXPECT_EQ(load_from_memory(bytes.data(), bytes.size(), "broadcast"), make_cpp_object());
  EXPECT_EQ(checkpoint_error([&] {
              load_from_memory(bytes.data(), 100, "broadcast");
            }).rfind("cannot read checkpoint 'broadcast': the file is truncated or corrupt", 0),
            0u);
}

TEST(MapLocationTest, MapsSavedLocationsLikeTorchLoad) {
  const MapLocation everything(c10::Device("cpu"));
  EXPECT_EQ(everything.device_for("cuda:3"), c10::Device("cpu"));
  const MapLocation mapping = MapLocation::parse("cuda:1=cuda:0,cpu=cuda:2", c10::Device("cuda:5"));
  EXPECT_EQ(mapping.device_for("cuda:1"), c10::Device("cuda:0"));
  EXPECT_EQ(mapping.device_for("cpu"), c10::Device("cuda:2"));
  EXPECT_EQ(mapping.device_for("cuda:0"), c10::Device("cuda:5"));
  EXPECT_EQ(mapping.to_string(), "cuda:1=cuda:0, cpu=cuda:2, others to cuda:5");
  EXPECT_EQ(MapLocation::parse("cuda=cpu", c10::Device("cuda:0")).device_for("cuda:7"), c10::Device("cpu"));
  const auto invalid = [](const std::string& spec) {
    try {
      MapLocation::parse(spec, c10::Device("cpu"));
    } catch (const std::invalid_argument& e) {
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  EXPECT_EQ(invalid("cuda:1"), "map_location entry 'cuda:1' is not FROM=TO (like cuda:1=cuda:0)");
  EXPECT_EQ(invalid("gpu:1=cpu"), "map_location source 'gpu:1' is not a device (cpu, cuda or cuda:<index>)");
  EXPECT_EQ(invalid("cpu=cuda:x"), "map_location target 'cuda:x' is not a device (cpu, cuda or cuda:<index>)");
}

TEST(PickleReaderTest, PassesEachStoragesSavedLocationToTheLoader) {
  std::vector<std::string> locations;
  const StorageLoader loader = [&](const std::string&, const std::string& location, c10::ScalarType dtype,
                                   int64_t numel) {
    locations.push_back(location);
    return at::zeros({numel}, dtype);
  };
  const std::string pkl =
      B("\x80\x02"
        "ctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storagectorch\nFloatStorage\n"
        "X\x01\x00\x00\x00"
        "0X\x06\x00\x00\x00"
        "cuda:1K\x04tQK\x00K\x04\x85K\x01\x85\x89"
        "ccollections\nOrderedDict\n)RtR.");
  EXPECT_EQ(read_pickle(pkl.data(), pkl.size(), loader).to_tensor().numel(), 4);
  EXPECT_EQ(locations, std::vector<std::string>{"cuda:1"});
}

TEST(ModuleStateTest, EveryMismatchIsListedAndTheModuleIsLeftAlone) {
  torch::nn::Sequential net(torch::nn::Linear(3, 2), torch::nn::Linear(2, 4));
  const at::Tensor before = net->parameters()[0].clone();
  const Value state = module_state_dict(*net);
  Value bad = Value::ordered_dict();
  bad.set("0.weight", at::zeros({2, 3}, at::kDouble));  // wrong dtype
  bad.set("0.bias", at::zeros({5}));                    // wrong shape
  bad.set("1.weight", state.at("1.weight"));
  bad.set("extra.weight", at::zeros({1}));  // unexpected; 1.bias is missing
  std::string message;
  try {
    load_module_state_dict(*net, bad);
  } catch (const std::runtime_error& e) {
    message = e.what();
  }
  EXPECT_EQ(message,
            "model state does not match the model: missing 1.bias; unexpected extra.weight; wrong shape 0.bias "
            "(saved [5], model has [2]); wrong dtype 0.weight (saved Double, model has Float)");
  EXPECT_TRUE(net->parameters()[0].equal(before));
  // Keys of a DDP-wrapped Python model load too.
  Value wrapped = Value::ordered_dict();
  for (const auto& [key, value] : state.entries()) wrapped.set("module." + key.to_string(), value);
  load_module_state_dict(*net, wrapped);
}

// ---------------------------------------------------------------------------------------------------------------
// Saving in the background

TEST_F(CheckpointTest, AsyncSaveWritesTheStateAsItWasWhenSaveReturned) {
  AsyncSaver saver;
  at::Tensor w = at::arange(10, at::kFloat);
  const Value state = Value::dict({{"w", w}, {"tail", w.narrow(0, 5, 5)}, {"step", 1}});
  const Value expected = Value::dict({{"w", w.clone()}, {"tail", w.narrow(0, 5, 5).clone()}, {"step", 1}});
  saver.save(state, {path("model_0.pt"), path("checkpoint.pt")});
  w.fill_(-1);  // training goes on and changes the weights
  saver.wait();
  const Value loaded = load(path("checkpoint.pt"));
  EXPECT_EQ(loaded, expected);
  EXPECT_EQ(loaded.at("tail").to_tensor().storage().data_ptr().get(),
            loaded.at("w").to_tensor().storage().data_ptr().get());
  EXPECT_EQ(read_file("model_0.pt"), read_file("checkpoint.pt"));
  // The next save reuses the snapshot buffers and sees the new values.
  saver.save(state, {path("checkpoint.pt")});
  saver.wait();
  EXPECT_EQ(load(path("checkpoint.pt")).at("w"), Value(at::full({10}, -1.0F)));
  EXPECT_EQ(files(), (std::vector<std::string>{"checkpoint.pt", "model_0.pt"}));
}

// The second snapshot of the same state copies into the first one's buffers: fresh memory would cost page faults
// on every save, often more than the copy.
TEST(SnapshotTest, ReusesItsHostBuffersAndKeepsViewsShared) {
  at::Tensor w = at::arange(1000, at::kFloat);
  const Value state = Value::dict({{"w", w}, {"view", w.narrow(0, 10, 20)}, {"b", at::ones({3}, at::kLong)}});
  std::vector<at::Tensor> staging;
  const Value first = snapshot_to_host(state, staging);
  ASSERT_EQ(staging.size(), 2u);
  const void* buffer = first.at("w").to_tensor().data_ptr();
  EXPECT_EQ(first, state);
  EXPECT_NE(buffer, w.data_ptr());
  w.fill_(7);
  const Value second = snapshot_to_host(state, staging);
  EXPECT_EQ(second.at("w").to_tensor().data_ptr(), buffer);
  EXPECT_EQ(second.at("view").to_tensor().storage().data_ptr().get(), buffer);
  EXPECT_EQ(second.at("view").to_tensor().storage_offset(), 10);
  EXPECT_EQ(second, state);
  EXPECT_EQ(first.at("w"), second.at("w"));  // the same memory: the first snapshot is gone once reused
}

TEST_F(CheckpointTest, AsyncSaveErrorsComeBackOnWaitAndTheNextSave) {
  AsyncSaver saver;
  const std::string nowhere = path("missing/checkpoint.pt");
  saver.save(Value::dict({{"epoch", 1}}), {nowhere});
  EXPECT_EQ(
      checkpoint_error([&] { saver.wait(); }).rfind("cannot write checkpoint '" + nowhere + "': cannot create", 0), 0u);
  saver.wait();  // reported once
  saver.save(Value::dict({{"epoch", 2}}), {nowhere});
  EXPECT_THROW(saver.save(Value::dict({{"epoch", 3}}), {path("ok.pt")}), CheckpointError);
  saver.save(Value::dict({{"epoch", 3}}), {path("ok.pt")});
  saver.wait();
  EXPECT_EQ(load(path("ok.pt")).at("epoch").to_int(), 3);
}

// ---------------------------------------------------------------------------------------------------------------
// Interop with Python's torch (1.13 here)

class InteropTest : public CheckpointTest {
 protected:
  void SetUp() override {
    CheckpointTest::SetUp();
    if (std::system((std::string(kPython) + " -c 'import torch' >/dev/null 2>&1").c_str()) != 0) {
      GTEST_SKIP() << kPython << " cannot import torch";
    }
  }
  // Runs interop.py with `args`; returns its exit status and output.
  static std::pair<int, std::string> interop(const std::string& args) {
    const std::string command =
        std::string(kPython) + " " + DDPRUN_SOURCE_DIR + "/tests/checkpoint/interop.py " + args + " 2>&1";
    FILE* pipe = ::popen(command.c_str(), "r");
    if (pipe == nullptr) return {-1, "popen failed"};
    std::string output;
    char buffer[4096];
    size_t n;
    while ((n = std::fread(buffer, 1, sizeof buffer, pipe)) > 0) output.append(buffer, n);
    const int status = ::pclose(pipe);
    return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, output};
  }
};

TEST_F(InteropTest, CppReadsPythonsCheckpointAndPythonReadsItBack) {
  const std::string py = path("python.pt");
  const auto [rc, out] = interop("write '" + py + "'");
  ASSERT_EQ(rc, 0) << out;
  const Value v = load(py);
  ASSERT_EQ(v.kind(), Value::Kind::Dict);

  // The model's state_dict: an OrderedDict in parameter order, with BatchNorm's buffers.
  const Value& model = v.at("model");
  ASSERT_EQ(model.kind(), Value::Kind::OrderedDict);
  const std::vector<std::pair<std::string, std::vector<int64_t>>> params = {{"0.weight", {3, 4}},
                                                                            {"0.bias", {3}},
                                                                            {"1.weight", {3}},
                                                                            {"1.bias", {3}},
                                                                            {"1.running_mean", {3}},
                                                                            {"1.running_var", {3}},
                                                                            {"1.num_batches_tracked", {}},
                                                                            {"3.weight", {2, 3}},
                                                                            {"3.bias", {2}}};
  ASSERT_EQ(model.entries().size(), params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    EXPECT_EQ(model.entries()[i].first.to_string(), params[i].first);
    EXPECT_EQ(model.entries()[i].second.to_tensor().sizes(), params[i].second) << params[i].first;
  }
  EXPECT_EQ(model.at("1.num_batches_tracked").to_tensor().scalar_type(), at::kLong);
  EXPECT_EQ(model.at("1.num_batches_tracked").to_tensor().item<int64_t>(), 1);
  EXPECT_EQ(model.at("0.weight").to_tensor().scalar_type(), at::kFloat);

  // SGD with momentum after one step: a momentum buffer per parameter, keyed by int.
  const Value& optimizer = v.at("optimizer");
  const std::vector<std::string> trainable = {"0.weight", "0.bias", "1.weight", "1.bias", "3.weight", "3.bias"};
  ASSERT_EQ(optimizer.at("state").entries().size(), trainable.size());
  for (size_t i = 0; i < trainable.size(); ++i) {
    EXPECT_EQ(optimizer.at("state").at(static_cast<int64_t>(i)).at("momentum_buffer").to_tensor().sizes(),
              model.at(trainable[i]).to_tensor().sizes());
  }
  const Value& group = optimizer.at("param_groups").items().at(0);
  EXPECT_DOUBLE_EQ(group.at("lr").to_double(), 0.05);  // halved by StepLR
  EXPECT_DOUBLE_EQ(group.at("initial_lr").to_double(), 0.1);
  EXPECT_DOUBLE_EQ(group.at("momentum").to_double(), 0.9);
  EXPECT_FALSE(group.at("nesterov").to_bool());
  EXPECT_EQ(group.at("params"), Value::list({0, 1, 2, 3, 4, 5}));

  const Value& scheduler = v.at("scheduler");
  EXPECT_EQ(scheduler.at("step_size").to_int(), 1);
  EXPECT_DOUBLE_EQ(scheduler.at("gamma").to_double(), 0.5);
  EXPECT_EQ(scheduler.at("last_epoch").to_int(), 1);
  EXPECT_EQ(scheduler.at("base_lrs"), Value::list({0.1}));
  EXPECT_EQ(scheduler.at("_last_lr"), Value::list({0.05}));

  EXPECT_EQ(v.at("epoch").to_int(), 3);
  EXPECT_EQ(v.at("step").to_int(), (int64_t{1} << 40) + 5);
  EXPECT_EQ(v.at("neg").to_int(), -7);
  EXPECT_EQ(v.at("neg_big").to_int(), -(int64_t{1} << 40));
  EXPECT_EQ(v.at("loss").to_double(), 0.125);
  EXPECT_TRUE(v.at("best").is_none());
  EXPECT_FALSE(v.at("done").to_bool());
  EXPECT_TRUE(v.at("resumed").to_bool());
  EXPECT_EQ(v.at("history"),
            Value::list({Value::list({1, 2.5}), Value::list({"a", nullptr}), Value::tuple({3, "\xc3\xa9"})}));
  EXPECT_EQ(v.at("tensors"), dtype_tensors());
  const at::Tensor row = v.at("view_row").to_tensor();
  const at::Tensor t = v.at("view_t").to_tensor();
  EXPECT_TRUE(same_storage(row, t));
  EXPECT_EQ(row.storage_offset(), 4);
  EXPECT_FALSE(t.is_contiguous());
  EXPECT_TRUE(t.equal(at::arange(12, at::kFloat).view({3, 4}).t()));

  // The same object pickled with protocol 4 (FRAME, MEMOIZE, SHORT_BINUNICODE, STACK_GLOBAL) reads the same.
  EXPECT_EQ(load(py + ".p4"), v);

  // Written back by C++, Python finds the same values, types and storage sharing, with allowed opcodes only.
  save(v, path("from_python.pt"));
  const auto [rc2, out2] = interop("check '" + path("from_python.pt") + "' python '" + py + "'");
  EXPECT_EQ(rc2, 0) << out2;
}

TEST_F(InteropTest, PythonReadsCppsCheckpoint) {
  save(make_cpp_object(), path("cpp.pt"));
  const auto [rc, out] = interop("check '" + path("cpp.pt") + "' cpp");
  EXPECT_EQ(rc, 0) << out;
}

TEST_F(InteropTest, PythonLoadsCppsStateDictWithWeightsOnly) {
  save(make_state_dict(), path("weights.pt"));
  const auto [rc, out] = interop("check '" + path("weights.pt") + "' weights");
  EXPECT_EQ(rc, 0) << out;
}

}  // namespace
}  // namespace ddprun::checkpoint
