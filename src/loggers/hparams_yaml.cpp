// PyYAML's emitter is a port of libyaml's, so libyaml with PyYAML's defaults (block style, width
// 80, indent 2, ASCII only) writes the same text for the same events. What libyaml's emitter
// does not do is PyYAML's resolver: deciding whether a string would read back as something else
// (a bool, number, null, date), which must then be quoted. That part is below.
#include "loggers/hparams_yaml.hpp"

#include <yaml.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <regex>
#include <stdexcept>
#include <type_traits>
#include <variant>

#include "cppfabric/detail/fmt.hpp"
#include "loggers/logger_detail.hpp"

namespace cppfabric::loggers::detail {
namespace {

/// Whether YAML 1.1 (PyYAML's resolver) would read the plain text as something else than a
/// string: a bool, int, float, null, timestamp, merge key or value key.
bool resolves_to_non_string(const std::string& text) {
  static const std::regex patterns(
      // bool
      "yes|Yes|YES|no|No|NO|true|True|TRUE|false|False|FALSE|on|On|ON|off|Off|OFF"
      // float
      "|[-+]?(?:[0-9][0-9_]*)\\.[0-9_]*(?:[eE][-+][0-9]+)?"
      "|\\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?"
      "|[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\\.[0-9_]*"
      "|[-+]?\\.(?:inf|Inf|INF)|\\.(?:nan|NaN|NAN)"
      // int
      "|[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+"
      "|[-+]?[1-9][0-9_]*(?::[0-5]?[0-9])+"
      // null, merge, value
      "|~|null|Null|NULL|<<|="
      // timestamp
      "|[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]"
      "|[0-9][0-9][0-9][0-9]-[0-9][0-9]?-[0-9][0-9]?(?:[Tt]|[ \\t]+)[0-9][0-9]?:[0-9][0-9]:"
      "[0-9][0-9](?:\\.[0-9]*)?(?:[ \\t]*(?:Z|[-+][0-9][0-9]?(?::[0-9][0-9])?))?",
      std::regex::ECMAScript | std::regex::optimize);
  return text.empty() || std::regex_match(text, patterns);
}

/// PyYAML's float text: repr() in lower case, ".0" added before a bare exponent.
std::string yaml_float(double value) {
  if (std::isnan(value)) return ".nan";
  if (std::isinf(value)) return value > 0 ? ".inf" : "-.inf";
  std::string text = python_float_repr(value);
  std::transform(text.begin(), text.end(), text.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  if (text.find('.') == std::string::npos && text.find('e') != std::string::npos) {
    text.replace(text.find('e'), 1, ".0e");
  }
  return text;
}

/// One libyaml emitter writing into a string.
class Emitter {
 public:
  Emitter() {
    if (yaml_emitter_initialize(&emitter_) == 0) {
      throw std::runtime_error("hparams.yaml: cannot initialise libyaml's emitter (out of memory)");
    }
    yaml_emitter_set_output(&emitter_, &Emitter::append, &out_);
    yaml_emitter_set_encoding(&emitter_, YAML_UTF8_ENCODING);
    yaml_emitter_set_unicode(&emitter_, 0);  // allow_unicode=False: escape non-ASCII
    yaml_emitter_set_width(&emitter_, 80);
    yaml_emitter_set_indent(&emitter_, 2);
    yaml_emitter_set_break(&emitter_, YAML_LN_BREAK);
  }
  ~Emitter() { yaml_emitter_delete(&emitter_); }
  Emitter(const Emitter&) = delete;
  Emitter& operator=(const Emitter&) = delete;

  void stream_start() {
    yaml_event_t event;
    yaml_stream_start_event_initialize(&event, YAML_UTF8_ENCODING);
    emit(event);
  }
  void stream_end() {
    yaml_event_t event;
    yaml_stream_end_event_initialize(&event);
    emit(event);
  }
  void document_start() {
    yaml_event_t event;
    yaml_document_start_event_initialize(&event, nullptr, nullptr, nullptr, /*implicit=*/1);
    emit(event);
  }
  void document_end() {
    yaml_event_t event;
    yaml_document_end_event_initialize(&event, /*implicit=*/1);
    emit(event);
  }
  void mapping_start() {
    yaml_event_t event;
    yaml_mapping_start_event_initialize(&event, nullptr, nullptr, /*implicit=*/1,
                                        YAML_BLOCK_MAPPING_STYLE);
    emit(event);
  }
  void mapping_end() {
    yaml_event_t event;
    yaml_mapping_end_event_initialize(&event);
    emit(event);
  }
  /// A bool, int or float: its text reads back as its own type when plain.
  void typed_scalar(const std::string& text) { scalar(text, /*plain_implicit=*/true, false); }
  /// A str: plain only when the resolver would read it back as a string, quoted otherwise.
  void string_scalar(const std::string& text) {
    scalar(text, !resolves_to_non_string(text), /*quoted_implicit=*/true);
  }

  const std::string& text() const { return out_; }

 private:
  void scalar(const std::string& text, bool plain_implicit, bool quoted_implicit) {
    yaml_event_t event;
    if (yaml_scalar_event_initialize(&event, nullptr, nullptr,
                                     reinterpret_cast<yaml_char_t*>(const_cast<char*>(text.data())),
                                     static_cast<int>(text.size()), plain_implicit ? 1 : 0,
                                     quoted_implicit ? 1 : 0, YAML_ANY_SCALAR_STYLE) == 0) {
      throw std::runtime_error("hparams.yaml: libyaml cannot hold a scalar (out of memory)");
    }
    emit(event);
  }
  /// libyaml takes the event and frees it, whether emitting succeeds or not.
  void emit(yaml_event_t& event) {
    if (yaml_emitter_emit(&emitter_, &event) == 0) {
      throw std::runtime_error(fmt::format("hparams.yaml: libyaml's emitter failed: {}",
                                           emitter_.problem ? emitter_.problem : "unknown"));
    }
  }
  static int append(void* data, unsigned char* buffer, size_t size) {
    static_cast<std::string*>(data)->append(reinterpret_cast<const char*>(buffer), size);
    return 1;
  }

  yaml_emitter_t emitter_{};
  std::string out_;
};

}  // namespace

std::string hparams_to_yaml(const HParams& params) {
  Emitter yaml;
  yaml.stream_start();
  yaml.document_start();
  yaml.mapping_start();
  for (const auto& [key, value] : params) {  // std::map: sorted, as sort_keys=True
    yaml.string_scalar(key);
    std::visit(
        [&](const auto& v) {
          using T = std::decay_t<decltype(v)>;
          if constexpr (std::is_same_v<T, bool>) {
            yaml.typed_scalar(v ? "true" : "false");
          } else if constexpr (std::is_same_v<T, int64_t>) {
            yaml.typed_scalar(std::to_string(v));
          } else if constexpr (std::is_same_v<T, double>) {
            yaml.typed_scalar(yaml_float(v));
          } else {
            yaml.string_scalar(v);
          }
        },
        value);
  }
  yaml.mapping_end();
  yaml.document_end();
  yaml.stream_end();
  return yaml.text();
}

}  // namespace cppfabric::loggers::detail
