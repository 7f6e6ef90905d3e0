//! The desktop window (`kith` with no command): iced 0.14.
//!
//! [`app`] holds the state and turns what the user does into engine
//! calls; [`view`] draws it; [`bridge`] opens the profile, runs the engine
//! behind a keyed subscription and serves the control socket alongside.
//! Like the command line, the window holds no protocol logic: it renders
//! engine state and forwards what the user asks for.

pub mod app;
pub mod bridge;
pub mod view;

pub use app::{App, Message, Options};

/// The fonts the window uses, shipped inside the binary so it looks the
/// same on every desktop (DejaVu, under its own free licence:
/// `assets/fonts/LICENSE-DejaVu.txt`).
pub mod fonts {
    use iced::Font;

    /// Body text.
    pub const REGULAR: Font = Font::with_name("DejaVu Sans");
    /// Headings and names.
    pub const BOLD: Font = Font {
        weight: iced::font::Weight::Bold,
        ..REGULAR
    };
    /// IDs, codes and safety numbers.
    pub const MONO: Font = Font::with_name("DejaVu Sans Mono");

    /// The font files, to load at start.
    pub const FILES: [&[u8]; 3] = [
        include_bytes!("../../assets/fonts/DejaVuSans.ttf"),
        include_bytes!("../../assets/fonts/DejaVuSans-Bold.ttf"),
        include_bytes!("../../assets/fonts/DejaVuSansMono.ttf"),
    ];
}

/// The application ID: the base name of the `.desktop` file, the AppStream
/// and Flatpak ID, and the window's Wayland app ID and X11 class, which is
/// how a desktop matches the window to its launcher and icon.
pub const APP_ID: &str = "io.github.kith_chat.Kith";

/// The window icon: `assets/icons/kith.svg` rendered at 128 px.
const ICON_PNG: &[u8] = include_bytes!("../../../../assets/icons/hicolor/128x128/apps/kith.png");

/// Decodes [`ICON_PNG`]. It is built in, so this fails only if the file
/// committed there is broken; the window then opens without an icon.
fn icon() -> Option<iced::window::Icon> {
    let mut decoder = png::Decoder::new(std::io::Cursor::new(ICON_PNG));
    decoder.set_transformations(png::Transformations::ALPHA | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().ok()?;
    let mut rgba = vec![0; reader.output_buffer_size()?];
    let frame = reader.next_frame(&mut rgba).ok()?;
    if frame.color_type != png::ColorType::Rgba || frame.bit_depth != png::BitDepth::Eight {
        return None;
    }
    rgba.truncate(frame.buffer_size());
    iced::window::icon::from_rgba(rgba, frame.width, frame.height).ok()
}

/// Why no window can open here, if that is so (a terminal with no
/// graphical session: the window system would only panic).
pub fn no_display() -> Option<String> {
    if !cfg!(all(unix, not(target_os = "macos"))) {
        return None;
    }
    let set = |name: &str| std::env::var_os(name).is_some_and(|v| !v.is_empty());
    if set("DISPLAY") || set("WAYLAND_DISPLAY") || set("WAYLAND_SOCKET") {
        return None;
    }
    Some(
        "no graphical session here (neither DISPLAY nor WAYLAND_DISPLAY is set); \
         start Kith from your desktop, or use the terminal commands (`kith --help`)"
            .into(),
    )
}

/// Opens the window and runs until it is closed.
pub fn run(options: Options) -> iced::Result {
    let mut application =
        iced::application(move || App::new(options.clone()), App::update, App::view)
            .title(App::title)
            .theme(App::theme)
            .subscription(App::subscription)
            .default_font(fonts::REGULAR)
            .window(window_settings())
            .exit_on_close_request(false);
    for file in fonts::FILES {
        application = application.font(file);
    }
    application.run()
}

fn window_settings() -> iced::window::Settings {
    iced::window::Settings {
        size: iced::Size::new(1100.0, 720.0),
        icon: icon(),
        #[cfg(target_os = "linux")]
        platform_specific: iced::window::settings::PlatformSpecific {
            application_id: APP_ID.into(),
            ..Default::default()
        },
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_built_in_icon_decodes() {
        let icon = super::icon().expect("assets/icons/hicolor/128x128/apps/kith.png decodes");
        let (rgba, size) = icon.into_raw();
        assert_eq!((size.width, size.height), (128, 128));
        assert_eq!(rgba.len(), 128 * 128 * 4);
    }
}
