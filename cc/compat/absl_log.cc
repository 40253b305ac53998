// absl's LogMessage::operator<< for unsigned long, instantiated here too.
//
// TensorFlow's XLA headers stream a size_t into absl's LOG/CHECK in inline code, which every
// TU including them references as absl's explicit instantiation (absl's log_message.h
// declares it `extern template`). TensorFlow 2.20's libtensorflow_framework.so.2 does not
// export that instantiation, so a library built against 2.20 failed to load ("undefined
// symbol: ...LogMessagelsImLi0EEE..."), and so did one built against 2.19 (absl 20230802).
// An explicit instantiation definition is a weak (COMDAT) symbol. Only for the absl
// releases TensorFlow 2.19 and 2.20 ship (20230802, 20250127); 2.21 exports its own (and
// its absl declares the operator with another template signature).
#include "absl/base/config.h"
#include "absl/log/internal/log_message.h"

#if defined(ABSL_LTS_RELEASE_VERSION) && \
    (ABSL_LTS_RELEASE_VERSION == 20230802 || ABSL_LTS_RELEASE_VERSION == 20250127)
template absl::log_internal::LogMessage&
absl::log_internal::LogMessage::operator<< <unsigned long, 0>(const unsigned long&);
#endif
