//! Attribute macros of `walflow-sdk`: each turns one per-event function into a complete
//! plugin component (the batch loop, `init`, and the world's export).

extern crate proc_macro;

use proc_macro::TokenStream;
use quote::quote;
use syn::{ItemFn, parse_macro_input};

/// `#[walflow_sdk::filter] fn keep(event: &Event) -> bool`: `true` keeps the event.
#[proc_macro_attribute]
pub fn filter(_attr: TokenStream, item: TokenStream) -> TokenStream {
    let function = parse_macro_input!(item as ItemFn);
    let name = &function.sig.ident;
    let (init, columns) = (init_fn(), columns_fn());
    plugin(
        &function,
        quote! {
            impl ::walflow_sdk::bindings::filter::exports::walflow::plugin::filter_api::Guest for __WalflowPlugin {
                #init
                #columns
                fn keep_table(db: ::std::string::String, table: ::walflow_sdk::Relation) -> ::std::option::Option<bool> {
                    ::walflow_sdk::__private::keep_table(db, table)
                }
                fn filter(batch: ::walflow_sdk::types::Batch) -> ::std::result::Result<::std::vec::Vec<bool>, ::std::string::String> {
                    ::walflow_sdk::__private::run_filter(batch, #name)
                }
            }
            ::walflow_sdk::bindings::filter::export!(__WalflowPlugin with_types_in ::walflow_sdk::bindings::filter);
        },
    )
}

/// `#[walflow_sdk::transform] fn t(event: &mut Event) -> Result<(), String>`: change the event
/// through its accessors; an `Err` fails only this event (the host applies `on_error`).
#[proc_macro_attribute]
pub fn transform(_attr: TokenStream, item: TokenStream) -> TokenStream {
    let function = parse_macro_input!(item as ItemFn);
    let name = &function.sig.ident;
    let (init, columns) = (init_fn(), columns_fn());
    plugin(
        &function,
        quote! {
            impl ::walflow_sdk::bindings::transform::exports::walflow::plugin::transform_api::Guest for __WalflowPlugin {
                #init
                #columns
                fn transform(batch: ::walflow_sdk::types::Batch) -> ::std::result::Result<::walflow_sdk::types::Edits, ::std::string::String> {
                    ::walflow_sdk::__private::run_transform(batch, #name)
                }
            }
            ::walflow_sdk::bindings::transform::export!(__WalflowPlugin with_types_in ::walflow_sdk::bindings::transform);
        },
    )
}

/// `#[walflow_sdk::topic_namer] fn name(event: &Event) -> String`: the event's topic (any
/// `AsRef<str>` will do, e.g. an `Rc<str>` a namer caches per table).
#[proc_macro_attribute]
pub fn topic_namer(_attr: TokenStream, item: TokenStream) -> TokenStream {
    let function = parse_macro_input!(item as ItemFn);
    let name = &function.sig.ident;
    let (init, columns) = (init_fn(), columns_fn());
    plugin(
        &function,
        quote! {
            impl ::walflow_sdk::bindings::topic_namer::exports::walflow::plugin::topic_namer_api::Guest for __WalflowPlugin {
                #init
                #columns
                fn table_topic(db: ::std::string::String, table: ::walflow_sdk::Relation) -> ::std::option::Option<::std::string::String> {
                    ::walflow_sdk::__private::table_topic(db, table)
                }
                fn name_topics(batch: ::walflow_sdk::types::Batch) -> ::std::result::Result<::walflow_sdk::types::Topics, ::std::string::String> {
                    ::walflow_sdk::__private::run_topic_namer(batch, #name)
                }
            }
            ::walflow_sdk::bindings::topic_namer::export!(__WalflowPlugin with_types_in ::walflow_sdk::bindings::topic_namer);
        },
    )
}

/// `#[walflow_sdk::sink] fn write(events: &[Event], topics: &[&str]) -> Result<(), String>`:
/// deliver a batch; `Ok` means the destination has it. Start an error with `rejected:` when the
/// destination refused the data (retrying cannot help); other errors are retried.
#[proc_macro_attribute]
pub fn sink(_attr: TokenStream, item: TokenStream) -> TokenStream {
    let function = parse_macro_input!(item as ItemFn);
    let name = &function.sig.ident;
    let init = init_fn();
    plugin(
        &function,
        quote! {
            impl ::walflow_sdk::bindings::sink::exports::walflow::plugin::sink_api::Guest for __WalflowPlugin {
                #init
                fn write(batch: ::walflow_sdk::types::Batch, topics: ::walflow_sdk::types::Topics) -> ::std::result::Result<(), ::std::string::String> {
                    ::walflow_sdk::__private::run_sink(batch, topics, #name)
                }
            }
            ::walflow_sdk::bindings::sink::export!(__WalflowPlugin with_types_in ::walflow_sdk::bindings::sink);
        },
    )
}

/// `#[walflow_sdk::init] fn setup(config: &str) -> Result<(), String>`: receives the plugin's
/// JSON configuration once before the first batch. Put it in the same module as the role
/// attribute.
#[proc_macro_attribute]
pub fn init(_attr: TokenStream, item: TokenStream) -> TokenStream {
    let function = parse_macro_input!(item as ItemFn);
    let name = &function.sig.ident;
    quote! {
        #function
        impl ::walflow_sdk::Init for __WalflowPlugin {
            fn init(config: &str) -> ::std::result::Result<(), ::std::string::String> {
                #name(config)
            }
        }
    }
    .into()
}

/// The role interface's `init`: the plugin's own (see [`init`]) or none, then its needs.
fn init_fn() -> proc_macro2::TokenStream {
    quote! {
        fn init(config: ::std::string::String) -> ::std::result::Result<::walflow_sdk::Needs, ::std::string::String> {
            __walflow_init(&config)?;
            ::std::result::Result::Ok(::walflow_sdk::__private::needs())
        }
    }
}

/// The role interface's `columns` (filters, transforms and topic namers).
fn columns_fn() -> proc_macro2::TokenStream {
    quote! {
        fn columns(table: ::walflow_sdk::Relation) -> ::std::option::Option<::std::vec::Vec<u32>> {
            ::walflow_sdk::__private::columns(table)
        }
    }
}

/// The function itself, the plugin type, the `init` dispatch and the role's impl.
fn plugin(function: &ItemFn, role: proc_macro2::TokenStream) -> TokenStream {
    quote! {
        #function

        #[doc(hidden)]
        pub struct __WalflowPlugin;

        #[doc(hidden)]
        fn __walflow_init(config: &str) -> ::std::result::Result<(), ::std::string::String> {
            #[allow(unused_imports)]
            use ::walflow_sdk::__private::{ViaNoInit as _, ViaUserInit as _};
            (&&::walflow_sdk::__private::InitProbe::<__WalflowPlugin>(::std::marker::PhantomData))
                .walflow_init(config)
        }

        #role
    }
    .into()
}
