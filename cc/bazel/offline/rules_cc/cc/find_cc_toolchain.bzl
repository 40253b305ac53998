"""find_cc_toolchain as rules_cc defines it, for the native toolchain."""
def find_cc_toolchain(ctx):
    if "@bazel_tools//tools/cpp:toolchain_type" in ctx.toolchains:
        return ctx.toolchains["@bazel_tools//tools/cpp:toolchain_type"]
    return ctx.attr._cc_toolchain[cc_common.CcToolchainInfo]

def find_cpp_toolchain(ctx):
    return find_cc_toolchain(ctx)
